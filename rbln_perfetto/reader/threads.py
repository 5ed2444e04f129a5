"""The thread and process tables as trace_processor v58.2 fills them from TrackEvent track descriptors: its
ProcessTracker and TrackEventTracker's descriptor resolution, replayed over the descriptors in the order its
sorter parses them (`TraceTables.owner_descriptors`).

- utid 0 and upid 0 are reserved at startup (the idle "swapper": tid 0 and pid 0, the main thread of upid 0
  and the only one with is_idle); a descriptor's tid 0 or pid 0 gets rows of its own;
- a process (`GetOrCreateProcess(pid)`) is created with its main thread (tid = pid); a thread
  (`UpdateThread(tid, pid)`) creates its process first, then itself, unless a live thread of that tid in
  that process exists;
- a descriptor track is resolved once, its parent first: a thread track takes `UpdateThread`, and when another
  track already holds that thread, the tid was reused: a new thread; a process track likewise takes
  `GetOrCreateProcess`, or starts a new process (with a new main thread) when another track holds it;
- every descriptor packet then names its thread (the latest non-empty `thread_name` wins) or its process
  (the first non-empty `process_name` holds); the descriptor's cmdline is not stored."""

from __future__ import annotations

from .tables import TraceTables


class ThreadTable:
    """trace_processor's thread and process rows: `threads` [tid, upid, name, is_main_thread] by utid,
    `processes` [pid, name] by upid."""

    def __init__(self):
        self.threads: list[list] = [[0, 0, None, 1]]  # the swapper's, reserved at startup
        self.processes: list[list] = [[0, None]]
        self.pids: dict[int, int] = {}  # pid -> its live upid (the reserved upid 0 is not looked up)
        self.tids: dict[int, list[int]] = {}  # tid -> its utids, oldest first
        self.utid_of: dict[int, int] = {}  # thread track uuid -> its utid
        self.upid_of: dict[int, int] = {}  # process track uuid -> its upid

    def _alive(self, utid: int) -> bool:
        upid = self.threads[utid][1]
        return upid is None or self.pids.get(self.processes[upid][0]) == upid

    def _find_thread(self, tid: int, pid: int | None) -> int | None:
        for utid in reversed(self.tids.get(tid, ())):
            if not self._alive(utid):
                continue
            upid = self.threads[utid][1]
            if upid is None or pid is None or self.processes[upid][0] == pid:
                return utid
        return None

    def start_thread(self, tid: int) -> int:
        self.threads.append([tid, None, None, None])
        self.tids.setdefault(tid, []).append(len(self.threads) - 1)
        return len(self.threads) - 1

    def process(self, pid: int) -> int:
        """GetOrCreateProcess: the live process of `pid`, or a new one with its main thread."""
        upid = self.pids.get(pid)
        if upid is None:
            self.processes.append([pid, None])
            upid = self.pids[pid] = len(self.processes) - 1
            self.thread(pid, pid)
        return upid

    def thread(self, tid: int, pid: int) -> int:
        """UpdateThread: the live thread `tid` of process `pid`, or a new one, associated with it."""
        upid = self.process(pid)
        utid = self._find_thread(tid, pid)
        if utid is None:
            utid = self.start_thread(tid)
        row = self.threads[utid]
        if row[1] is None:
            row[1], row[3] = upid, int(tid == pid)
        return utid

    def start_process(self, pid: int) -> int:
        """StartNewProcess: a pid reused: a new process and main thread replace the old ones."""
        self.pids.pop(pid, None)
        self.tids.pop(pid, None)
        self.start_thread(pid)
        return self.process(pid)


def thread_process_rows(t: TraceTables) -> ThreadTable:
    """The thread and process rows trace_processor gives `t`'s thread and process descriptors (see the
    module's docstring)."""
    table = ThreadTable()
    utid_owner: dict[int, int] = {}  # utid -> the track uuid holding it
    upid_owner: dict[int, int] = {}
    resolved: set[int] = set()

    def resolve(uuid: int, seen: tuple = ()) -> None:
        track = t.tracks.get(uuid)
        if uuid in resolved or track is None or uuid in seen:
            return
        resolved.add(uuid)
        if track.parent_uuid is not None:
            resolve(track.parent_uuid, seen + (uuid,))
        if track.thread is not None:
            pid, tid, _ = track.thread
            utid = table.thread(tid, pid)
            if utid_owner.setdefault(utid, uuid) != uuid:  # the tid was reused
                utid = table.start_thread(tid)
                table.thread(tid, pid)
                utid_owner[utid] = uuid
            table.utid_of[uuid] = utid
        elif track.process is not None:
            pid = track.process[0]
            upid = table.process(pid)
            if upid_owner.setdefault(upid, uuid) != uuid:  # the pid was reused
                upid = table.start_process(pid)
                upid_owner[upid] = uuid
            table.upid_of[uuid] = upid

    for _, _, uuid, descriptor in sorted(t.owner_descriptors):
        resolve(uuid)
        if descriptor[0] == "thread":
            _, pid, tid, name = descriptor
            utid = table.thread(tid, pid)
            if name:
                table.threads[utid][2] = name
        else:
            _, pid, name = descriptor
            upid = table.process(pid)
            if name and table.processes[upid][1] is None:
                table.processes[upid][1] = name
    return table
