"""`rbln-perfetto plot` on a real profiled run: a submodule has one colour in every plot, the legend
lies outside the axes, host work is visible, a per-invocation file shows its commands, and
`--level commands` draws every command and DMA. Bars are read back from the figure, counts and
colours checked against the capture."""

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest

from rbln_perfetto.recorder.capture import iter_records, read_info
from rbln_perfetto.cli import main
from rbln_perfetto.errors import UsageError
from rbln_perfetto.analysis.plot import HOST_COLOR, draw_timeline
from rbln_perfetto.query import open_trace


@pytest.fixture(scope="module")
def profiled(shared_run):
    return shared_run({"text_encoder_3": {"device": 1}, "command_budget": "64KiB"}, steps=2)


def _invocations(capture):
    """(sequence_index, program) of every invocation, in run order, from the capture alone."""
    info = read_info(capture)
    return [(rec.invocation.sequence_index, info.programs[rec.invocation.program_id])
            for _, rec in iter_records(capture) if rec.WhichOneof("kind") == "invocation"]


def _host_events(capture) -> int:
    return sum(rec.WhichOneof("kind") == "host" for _, rec in iter_records(capture))


def _file_of(prof, sequence_index):
    (path,) = [f for f in prof.invocation_files if f.name.startswith(f"{sequence_index:04d}_")]
    return path


def _draw(path, **kwargs):
    with open_trace(path, backend="sqlite") as tr:
        return draw_timeline(tr, **kwargs)


def _bars(fig, lane: str) -> list:
    """(start, width, rgba) of every bar of `lane` on every device, in data units, by start."""
    out = []
    for ax in fig.axes:
        for c in ax.collections:
            if (c.get_gid() or "").startswith(f"{lane}:"):
                colors = c.get_facecolors()
                for i, path in enumerate(c.get_paths()):
                    x = path.vertices[:, 0]
                    out.append((x.min(), x.max() - x.min(), tuple(np.round(colors[i % len(colors)], 4))))
    return sorted(out)


def _pixel_widths(fig, lane: str) -> list:
    ax = fig.axes[0]
    return [ax.transData.transform((x + w, 0))[0] - ax.transData.transform((x, 0))[0] for x, w, _ in _bars(fig, lane)]


def test_a_submodule_has_one_colour_in_every_plot(profiled):
    """Each file of one invocation draws its commands in its submodule's colour and a lighter shade
    of it (every second command); files of one submodule use the same two, no two submodules share
    one, and the aggregate's plots use the same colours for the same submodules."""
    invocations = _invocations(profiled.capture_file)
    shades: dict[str, set] = {}
    first_command = []
    for seq, prog in invocations:
        fig = _draw(_file_of(profiled, seq))  # one invocation: its commands and DMA
        colours = frozenset(rgba for lane in ("commands", "dma") for _, _, rgba in _bars(fig, lane))
        assert len(colours) == (2 if len(prog.commands) > 1 else 1), (seq, colours)
        shades.setdefault(prog.submodule, set()).add(colours)
        first_command.append(_bars(fig, "commands")[0][2])
    assert all(len(s) == 1 for s in shades.values()), shades
    shades = {s: c.pop() for s, c in shades.items()}
    every = frozenset().union(*shades.values())
    assert len(shades) == 5 and sum(map(len, shades.values())) == len(every), "two submodules share a colour"
    # The aggregate's invocations in run order: each in the colour of its file's first command.
    workload = _bars(_draw(profiled.aggregate_file, level="invocations"), "invocations")
    assert [rgba for _, _, rgba in workload] == first_command
    commands = _draw(profiled.aggregate_file, level="commands")
    assert {rgba for _, _, rgba in _bars(commands, "commands")} == every


@pytest.mark.parametrize("which,level", [("aggregate", "invocations"), ("aggregate", "commands"), ("one", "auto")])
def test_the_legend_lies_outside_the_axes(profiled, which, level):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = profiled.aggregate_file if which == "aggregate" else profiled.invocation_files[0]
    fig = _draw(path, level=level)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert len(legends) == 1
    box = legends[0].get_window_extent(renderer)
    for ax in fig.axes:  # the plot area and the lane names' axis, tick labels included
        assert not box.overlaps(ax.get_tightbbox(renderer)), (box, ax.get_tightbbox(renderer))
    assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1), "the legend is cut off"


def test_host_work_is_visible(profiled, tmp_path):
    hosts = _host_events(profiled.capture_file)
    assert hosts > 0
    for level in ("invocations", "commands"):
        fig = _draw(profiled.aggregate_file, level=level)
        bars = _bars(fig, "host")
        assert len(bars) == hosts
        assert {rgba for _, _, rgba in bars} == {tuple(np.round(matplotlib.colors.to_rgba(HOST_COLOR), 4))}
        assert min(_pixel_widths(fig, "host")) >= 1.0, "host work narrower than a pixel"
    out = tmp_path / "aggregate.png"
    assert main(["plot", str(profiled.aggregate_file), "-o", str(out), "--backend", "sqlite"]) == 0
    rgb = matplotlib.image.imread(out)[..., :3]
    # The PNG's rows of device 0's host lane (from the same layout): one host-coloured run per host event at least.
    fig = _draw(profiled.aggregate_file, level="invocations")
    ax = fig.axes[0]
    (lane,) = [c for c in ax.collections if c.get_gid() == "host:Device 0"]
    ys = ax.transData.transform(lane.get_paths()[0].vertices)[:, 1]
    middle_row = rgb.shape[0] - int((ys.min() + ys.max()) / 2)
    is_host = (np.abs(rgb[middle_row] - np.asarray(matplotlib.colors.to_rgb(HOST_COLOR))) < 0.02).all(axis=-1)
    runs = int(is_host[0]) + int((is_host[1:] & ~is_host[:-1]).sum())  # host-coloured runs along the lane
    px = [(ax.transData.transform((x, 0))[0], ax.transData.transform((x + w, 0))[0]) for x, w, _ in _bars(fig, "host")]
    apart = 1 + sum(b[0] - a[1] >= 2 for a, b in zip(px, px[1:]))  # events that cannot share a run of pixels
    assert runs >= apart, f"{runs} host-coloured runs of pixels for {apart} separate host events"


def test_a_per_invocation_file_shows_its_commands_over_time(profiled, tmp_path):
    durations = {rec.invocation.sequence_index: list(rec.invocation.durations_ns)
                 for _, rec in iter_records(profiled.capture_file) if rec.WhichOneof("kind") == "invocation"}
    for seq, prog in _invocations(profiled.capture_file):
        fig = _draw(_file_of(profiled, seq))
        commands, dma = _bars(fig, "commands"), _bars(fig, "dma")
        assert len(commands) == len(prog.commands), (seq, prog.submodule)
        assert len(dma) == len(prog.inputs) + len(prog.outputs)
        assert not _bars(fig, "invocations")
        starts = [x for x, _, _ in commands]
        assert starts[-1] > starts[0], "all commands drawn at one time"
        # They tile the invocation between its input and output copies: the run of bars is most of the axis.
        ax = fig.axes[0]
        assert (starts[-1] + commands[-1][1] - starts[0]) > 0.3 * (ax.get_xlim()[1] - ax.get_xlim()[0])
        # The longest command (by the capture's own timestamps) is named on its bar, where it fits.
        n_in = len(prog.inputs)  # a call's gaps: its input copies, its commands, its output copies
        longest = prog.commands[int(np.argmax(durations[seq][n_in:n_in + len(prog.commands)]))]
        labels = [t.get_text().lstrip("…") for t in ax.texts if t.get_gid() == "command-label"]
        assert all(any(c.layer.endswith(text) for c in prog.commands) for text in labels), labels
        # (where it fits: 8 characters of about 6 px; a noisy run can leave even the longest bar narrower)
        axes_px = ax.get_window_extent().width
        widest_px = max(w for _, w, _ in commands) / (ax.get_xlim()[1] - ax.get_xlim()[0]) * axes_px
        if prog.submodule == "transformer" and widest_px >= 60:
            assert any(longest.layer.endswith(text) for text in labels), (longest.layer, labels)
    out = tmp_path / "one.png"
    assert main(["plot", str(profiled.invocation_files[-1]), "-o", str(out), "--backend", "sqlite"]) == 0
    assert matplotlib.image.imread(out).shape[:2] == (190, 1200)  # one device row


def test_level_commands_draws_every_command_and_dma(profiled, tmp_path, capsys):
    invocations = _invocations(profiled.capture_file)
    fig = _draw(profiled.aggregate_file, level="commands")
    assert len(_bars(fig, "commands")) == sum(len(p.commands) for _, p in invocations)
    assert len(_bars(fig, "dma")) == sum(len(p.inputs) + len(p.outputs) for _, p in invocations)
    out = tmp_path / "commands.png"
    assert main(["plot", str(profiled.aggregate_file), "--level", "commands", "-o", str(out),
                 "--backend", "sqlite"]) == 0
    assert out.stat().st_size > 0
    one = _draw(profiled.invocation_files[0], level="invocations")  # asked for: the file's one invocation
    assert len(_bars(one, "invocations")) == 1 and not _bars(one, "commands")


def test_a_bad_level_is_refused(profiled, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["plot", str(profiled.aggregate_file), "--level", "layers"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --level: invalid choice: 'layers' (choose from 'auto', 'invocations', 'commands')" in err
    with open_trace(profiled.aggregate_file, backend="sqlite") as tr, \
            pytest.raises(UsageError, match="level='layers' is not valid; valid: auto, invocations, commands"):
        draw_timeline(tr, level="layers")
