"""`rbln_perfetto.naming` reads back what it writes: slice names, file names, and the layer SQL on real SQLite."""

import sqlite3

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pipeline.contract import CommandSpec, ProgramInfo, TransferSpec

from rbln_perfetto import naming
from rbln_perfetto.exporter.interning import Interner
from rbln_perfetto.exporter.program_template import ProgramTemplate
from rbln_perfetto.query.reports import REPORTS
from rbln_perfetto.exporter.tracks import TrackIds

LAYERS = ["blocks.0.attn", "to_q", "a_1", "a_1_2", "x_0_", "_lead", "3", "0_0", "conv+relu", "attn#2", "a + b # c_7",
          "ünïcode_9", "tail_"]
# Layers as captures may hold them: any text but NUL (SQLite's length() stops there) and lone surrogates.
ANY_LAYER = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40)
INDEX = st.integers(0, 10**7)


@pytest.mark.parametrize("layer", LAYERS)
def test_command_slice_name_parses_back(layer):
    for seq, index in ((0, 0), (6, 1), (12345, 17)):
        name = naming.command_slice_name(seq, layer, index)
        assert name == f"{seq}_{layer}_{index}"
        assert naming.parse_command_slice_name(name) == (seq, layer, index)
        assert naming.parse_command_slice_name(name, index) == (seq, layer, index)
        assert naming.command_name_prefix(seq) + naming.command_name_suffix(layer, index) == name


@settings(max_examples=200, deadline=None)
@given(seq=INDEX, layer=ANY_LAYER, index=INDEX)
def test_any_command_slice_name_parses_back(seq, layer, index):
    name = naming.command_slice_name(seq, layer, index)
    assert naming.parse_command_slice_name(name) == naming.CommandName(seq, layer, index)
    assert naming.parse_command_slice_name(name, index) == naming.CommandName(seq, layer, index)


@pytest.mark.parametrize("name, command_index", [
    ("transformer #3", None), ("6__0", None), ("6_layer", None), ("x_layer_0", None), ("6_layer_", None),
    ("6_layer_1", 2), ("6_layer_12", 2), ("", None),
])
def test_other_names_are_not_command_slice_names(name, command_index):
    assert naming.parse_command_slice_name(name, command_index) is None


@pytest.mark.parametrize("submodule", ["transformer", "text_encoder_2", "a #1", "x", ""])
def test_workload_slice_name_parses_back(submodule):
    assert naming.workload_slice_name(submodule, 3) == f"{submodule} #3"
    assert naming.parse_workload_slice_name(naming.workload_slice_name(submodule, 3)) == (submodule, 3)
    for other in ("transformer", "transformer #", "transformer #x", "6_layer_0"):
        assert naming.parse_workload_slice_name(other) is None


def test_dma_slice_names():
    assert naming.dma_to_device_slice_name("latents", 1) == "dma latents host -> device 1"
    assert naming.dma_to_host_slice_name("sample", 0) == "dma sample device 0 -> host"


@pytest.mark.parametrize("seq, submodule, call, expected", [
    (6, "transformer", 0, "0006_transformer_0.pb"),
    (2, "text_encoder_3", 1, "0002_text_encoder_3_1.pb"),
    (12345, "vae", 7, "12345_vae_7.pb"),
    (0, "my model/v2: x", 0, "0000_my_model_v2__x_0.pb"),
    (1, "1234_5", 2, "0001_1234_5_2.pb"),
    (3, "é" * 100, 4, "0003_" + "_" * 64 + "_4.pb"),
])
def test_invocation_file_name_round_trip(seq, submodule, call, expected):
    name = naming.invocation_file_name(seq, submodule, call)
    assert name == expected
    assert naming.parse_invocation_file_name(name) == (seq, expected[len(f"{seq:04d}_"):-len(f"_{call}.pb")], call)
    assert naming.invocation_file_name(*naming.parse_invocation_file_name(name)) == name  # safe names are kept
    assert naming.parse_invocation_file_name(naming.AGGREGATE_FILE_NAME) is None
    assert naming.parse_invocation_file_name("6_transformer_0.pb") is None  # fewer than 4 digits


def test_layer_sql_is_the_text_the_reports_always_used():
    assert naming.LAYER_SQL == (
        "substr(s.name, instr(s.name, '_') + 1, length(s.name) - instr(s.name, '_') "
        "- length(cast(extract_arg(s.arg_set_id, 'debug.command_index') AS text)) - 1)")
    # top_layers names a command outside a split op by its name (a split op's commands by the op's name).
    assert f"SELECT {naming.LAYER_SQL} AS layer," in REPORTS["top_layers"].sql


def _layers_by_sql(rows):
    """Run `LAYER_SQL` (the reports' exact text) and `layer_sql()` over columns, on stdlib sqlite3."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE slice (name TEXT, arg_set_id INTEGER, command_index INTEGER)")
    db.executemany("INSERT INTO slice VALUES (?, ?, ?)", [(n, i, c) for i, (n, c) in enumerate(rows)])
    args = {i: c for i, (_, c) in enumerate(rows)}
    db.create_function("extract_arg", 2, lambda arg_set_id, key: args[arg_set_id] if key == "debug.command_index" else None)
    exact = [r[0] for r in db.execute(f"SELECT {naming.LAYER_SQL} FROM slice s ORDER BY s.arg_set_id")]
    by_column = [r[0] for r in db.execute(f"SELECT {naming.layer_sql('name', 'command_index')} FROM slice ORDER BY arg_set_id")]
    db.close()
    assert exact == by_column
    return exact


def test_layer_sql_recovers_the_layer_of_formatted_names():
    rows = [(naming.command_slice_name(seq, layer, index), index)
            for layer in LAYERS for seq, index in ((0, 0), (7, 3), (123, 45), (100000, 1234567))]
    assert _layers_by_sql(rows) == [naming.parse_command_slice_name(n, c).layer for n, c in rows]
    assert _layers_by_sql(rows) == [layer for layer in LAYERS for _ in range(4)]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(INDEX, ANY_LAYER, INDEX), min_size=1, max_size=20))
def test_layer_sql_recovers_any_layer(parts):
    rows = [(naming.command_slice_name(seq, layer, index), index) for seq, layer, index in parts]
    assert _layers_by_sql(rows) == [layer for _, layer, _ in parts]


def test_program_template_writes_the_names_naming_formats():
    """The template writes a command's name in two pieces; assembled, they are `command_slice_name`."""
    commands = tuple(CommandSpec(layer, "matmul", index, count, "[1, 2]", 64, 128, 32)
                     for layer, index, count in (("blocks.0_attn", 0, 2), ("blocks.0_attn", 1, 2), ("conv+relu#2", 0, 1)))
    x = TransferSpec("latents", (1, 4), "float16", 8, 0)
    y = TransferSpec("sample", (1, 4), "float16", 8, 2)
    program = ProgramInfo("transformer", 1, "cpu", 1024, (x,), commands, (y,))
    seq = 1234
    template = ProgramTemplate(program, TrackIds(), Interner(), 1024, 4, len(naming.command_name_prefix(seq)))
    assert template.layout.num_ticks == 1 + 3 + 1 + 1
    ticks = np.arange(template.layout.num_ticks, dtype=np.int64) * 1000 + 10**9
    data = template.assemble(ticks, seq, 5, 1, 0)
    for cmd in commands:
        assert naming.command_slice_name(seq, cmd.layer, cmd.command_index).encode() in data
    assert naming.dma_to_device_slice_name("latents", 1).encode() in data
    assert naming.dma_to_host_slice_name("sample", 1).encode() in data
    assert naming.workload_slice_name("transformer", 5).encode() in template.names_packet(5, 1)
