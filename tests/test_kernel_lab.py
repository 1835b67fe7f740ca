"""The GPU session's attention tile sweep (kernels/attention/validate_and_time.py) starts from what
the launchers ship: its first candidate per kernel and head dim is the launchers' GPU default, and
every candidate turns into a config the launchers accept (variant keys included)."""
import pytest
import torch

from helpers import load_attention_sweep
from npedit.ops.triton import attention as fwd_kernels
from npedit.ops.triton import attention_bwd as bwd_kernels


@pytest.fixture
def sweep(monkeypatch):
    module = load_attention_sweep()
    for kernels in (fwd_kernels, bwd_kernels):  # the GPU tiles, not the interpreter's 16 x 16
        monkeypatch.setattr(kernels, "interpreting", lambda: False)
    return module


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_sweeps_list_the_shipped_tiles_first(sweep, head_dim):
    tiles = sweep.TILES[head_dim]
    assert sweep._tile(tiles["fwd"][0]) == fwd_kernels._default_fwd_tiles(head_dim, torch.bfloat16)
    split_kv, split_q = bwd_kernels._default_bwd_configs(head_dim, torch.bfloat16)
    assert sweep._tile(tiles["dkdv"][0]) == split_kv and sweep._tile(tiles["dq"][0]) == split_q
    fused_kv = bwd_kernels._default_bwd_configs(head_dim, torch.bfloat16, fused=True)[0]
    assert dict(fused_kv, FUSE_DQ=True) in [sweep._tile(t) for t in tiles["dkdv"]], "fused default not swept"
    if head_dim in bwd_kernels.WS_BWD_TILES:  # the Gluon backward's default, with dQ by atomics
        ws_kv = dict(bwd_kernels.WS_BWD_TILES[head_dim], WS=True, FUSE_DQ=True)
        assert ws_kv in [sweep._tile(t) for t in tiles["dkdv"]], "warp-specialised backward's default not swept"


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_every_candidate_becomes_a_launcher_config(sweep, monkeypatch, head_dim):
    monkeypatch.setattr(fwd_kernels, "TILE_OVERRIDE_HEAD_DIM", head_dim)
    for kind, candidates in sweep.TILES[head_dim].items():
        for tile in candidates:
            monkeypatch.setitem(fwd_kernels.TILE_OVERRIDES, kind, sweep._tile(tile))
            if kind == "fwd":
                cfg = fwd_kernels.fwd_config(head_dim, torch.bfloat16)
                variant = tile[4] if len(tile) > 4 else "pointer"
                assert cfg["TMA"] == variant.startswith("tma") and cfg["WARP_SPECIALIZE"] == (variant == "tma-ws")
                assert cfg["WS"] == (variant == "ws")
            else:
                kv, q = bwd_kernels.bwd_configs(head_dim, torch.bfloat16)
                cfg = kv if kind == "dkdv" else q
                if kind == "dkdv":
                    assert kv["FUSE_DQ"] == (tile[4:] in (("fused",), ("ws-fused",), ("ws-dqtma",)))
                    assert kv["WS"] == (tile[4:] in (("ws-fused",), ("ws-split",), ("ws-dqtma",)))
                    assert kv["DQ_TMA"] == (tile[4:] == ("ws-dqtma",))
                    if kv["WS"]:  # the Gluon kernel's rule: 16 keys per compute warp
                        assert kv["BLOCK_N"] == 16 * kv["num_warps"] and head_dim in bwd_kernels.WS_BWD_TILES
                assert cfg["TMA"] == (tile[4:] == ("tma",))
            assert (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["num_warps"], cfg["num_stages"]) == tile[:4]
        monkeypatch.delitem(fwd_kernels.TILE_OVERRIDES, kind)
    assert fwd_kernels.fwd_config(head_dim, torch.float32)["TMA"] is False  # overrides never touch fp32


def test_a_failed_smoke_check_drops_the_gluon_candidates_and_nothing_else(sweep):
    before = {hd: {kind: list(tiles) for kind, tiles in lists.items()} for hd, lists in sweep.TILES.items()}
    sweep.drop_variants(["ws", "ws-fused", "ws-split", "ws-dqtma"])
    for hd, lists in sweep.TILES.items():
        for kind, tiles in lists.items():
            assert tiles == [t for t in before[hd][kind]
                             if t[4:] not in (("ws",), ("ws-fused",), ("ws-split",), ("ws-dqtma",))]
            assert tiles[0] == before[hd][kind][0]
    assert any(t[4:] == ("ws-fused",) for t in before[128]["dkdv"])  # there was something to drop
    with pytest.raises(ValueError, match="unknown tile variants"):
        sweep.drop_variants(["wss"])


def test_smoke_settings_reach_each_gluon_kernel_alone(sweep, monkeypatch):
    """Each SMOKE setting turns on one Gluon kernel and leaves the other kernels at their defaults."""
    configs = {}
    for name, (env, dkdv) in sweep.SMOKE.items():
        for key in ("NPEDIT_ATTN_FWD", "NPEDIT_ATTN_BWD"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(fwd_kernels, "TILE_OVERRIDES", {"dkdv": dkdv} if dkdv else {})
        kv, _ = bwd_kernels.bwd_configs(128, torch.bfloat16)
        configs[name] = (fwd_kernels.fwd_config(128, torch.bfloat16)["WS"], kv["WS"], kv["FUSE_DQ"], kv["DQ_TMA"])
    assert configs == {"ws-fwd": (True, False, False, False), "ws-bwd": (False, True, True, False),
                       "ws-bwd-dkdv": (False, True, False, False), "ws-bwd-dqtma": (False, True, True, True)}


def test_smoke_runs_each_setting_then_restores_the_environment(sweep, monkeypatch):
    import os
    monkeypatch.setenv("NPEDIT_ATTN_BWD", "split")
    monkeypatch.delenv("NPEDIT_ATTN_FWD", raising=False)
    seen = {}

    def validate(head_dims):
        seen[len(seen)] = (os.environ.get("NPEDIT_ATTN_FWD"), os.environ.get("NPEDIT_ATTN_BWD"),
                           dict(fwd_kernels.TILE_OVERRIDES), head_dims)
        return [{"ok": True}]

    monkeypatch.setattr(sweep, "validate", validate)
    monkeypatch.setattr(fwd_kernels, "TILE_OVERRIDES", {})
    monkeypatch.setattr(sweep, "TILE_OVERRIDES", fwd_kernels.TILE_OVERRIDES)
    assert sweep.smoke_ws() == {name: [{"ok": True}] for name in sweep.SMOKE}
    dkdv = dict(bwd_kernels.WS_BWD_TILES[128], WS=True)
    assert list(seen.values()) == [("ws", "split", {}, (64, 128)), (None, "ws", {}, (64, 128)),
                                   (None, "split", {"dkdv": dkdv}, (64, 128)),
                                   (None, "split", {"dkdv": dict(dkdv, FUSE_DQ=True, DQ_TMA=True)}, (64, 128))]
    assert os.environ.get("NPEDIT_ATTN_FWD") is None and os.environ["NPEDIT_ATTN_BWD"] == "split"
    assert fwd_kernels.TILE_OVERRIDES == {}


def test_warm_up_gives_up_on_a_hung_job_and_keeps_the_others(sweep):
    """The sweep's parallel warm-up (run_with_deadline): finished jobs return their results in job
    order, a job still running at the deadline (here a 60 s sleep, as a deadlocked kernel would) is
    reported "hung" and its process killed instead of waited for."""
    import time
    start = time.monotonic()
    results = sweep.run_with_deadline(time.sleep, [0, 0.1, 60], workers=3, deadline_s=10)
    assert results == [None, None, "hung"]
    assert time.monotonic() - start < 60  # the hung job was not waited for


def test_hung_warm_up_candidates_are_reported_not_timed(sweep, monkeypatch):
    """precompile_sweep marks the candidates whose warm-up hung, and names every candidate once."""
    jobs_seen = []

    def fake_run(fn, jobs, workers, deadline_s):
        jobs_seen.extend(jobs)
        return ["hung" if job[3][4:] == ("ws-dqtma",) else dict(kernel=job[2], tile=list(job[3]), s=1.0)
                for job in jobs]

    monkeypatch.setattr(sweep, "run_with_deadline", fake_run)
    rows = sweep.precompile_sweep(128, False, workers=4, deadline_s=1)
    expected = [(kind, tuple(t)) for kind, tiles in sweep.TILES[128].items() for t in tiles]
    assert [(r["kernel"], tuple(r["tile"])) for r in rows] == expected
    assert {(r["kernel"], tuple(r["tile"])) for r in rows if r.get("hung")} == {("dkdv", (64, 128, 8, 2, "ws-dqtma"))}
    assert all(job[:2] == (128, False) for job in jobs_seen)
