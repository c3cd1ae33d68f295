"""Engine units with the committed weights: bidirectional propagation, several anchors, stopping where the
object ends, and round fusion keeping the better slice."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from compare_real import ORIENTATIONS
from conftest import anchor_probs, capsule_volume, cube_volume
from scipy import ndimage as ndi

from lib.data.robot import dice, next_click
from lib.engine.geometry import Box, bounding_box, crop_slices, distinctness, imaged_area, label_3d
from lib.engine.propagation import PropagationConfig, SliceFeatures, propagate, uncertainty
from lib.engine.round_fusion import RoundFusion
from lib.engine.segmenter import LimNetSegmenter, Reading, propagation_precision
from lib.net.bundle import WORKING_SIZE


@pytest.fixture()
def setup(net):
    image, label = capsule_volume()
    box = Box.of_mask(label.any(2), 1.5, 32)
    feats = SliceFeatures(net.memory, image, box, WORKING_SIZE, torch.device("cpu"))
    return image, label, box, feats


def slice_dice(prob, label, box, k):
    gt = crop_slices(label.astype(np.float32), box, np.array([[k]]), WORKING_SIZE)[0, 0] > 0.5
    return dice((prob > 0.5).numpy(), gt.numpy())


def test_propagates_in_both_directions(net, setup):
    image, label, box, feats = setup
    out = propagate(net.memory, feats, anchor_probs(label, box, [27]))
    assert min(out) < 20 and max(out) > 35
    for k in (19, 23, 31, 35):
        assert slice_dice(out[k], label, box, k) > 0.7, k


def test_several_anchors_cover_the_slices_between(net, setup):
    image, label, box, feats = setup
    out = propagate(net.memory, feats, anchor_probs(label, box, [18, 36]))
    for k in range(19, 36):
        assert k in out and slice_dice(out[k], label, box, k) > 0.7, k


def test_anchor_values_are_encoded_once_per_slice_and_mask(net, setup, monkeypatch):
    """Both sweeps remember every anchor, and a later round keeps most anchors: each anchor's memory value is
    encoded once while its mask stays the same, and the answers are those of an uncached propagation."""
    image, label, box, feats = setup
    anchors = anchor_probs(label, box, [18, 36])
    encode, calls = net.memory.encode_value, []
    monkeypatch.setattr(net.memory, "encode_value", lambda *a: calls.append(1) or encode(*a))
    fresh = SliceFeatures(net.memory, image, box, WORKING_SIZE, torch.device("cpu"))
    first = propagate(net.memory, fresh, anchors)
    n_first = len(calls)
    again = propagate(net.memory, fresh, anchors)
    assert n_first - (len(calls) - n_first) == len(anchors)  # the second round encodes no anchor
    assert sorted(first) == sorted(again) and all(torch.equal(first[k], again[k]) for k in first)
    changed = {**anchors, 36: torch.zeros_like(anchors[36])}  # the user cleared slice 36
    calls.clear()
    cached = propagate(net.memory, fresh, changed)
    n_cached = len(calls)
    uncached = propagate(net.memory, SliceFeatures(net.memory, image, box, WORKING_SIZE, torch.device("cpu")), changed)
    assert n_cached == len(calls) - n_cached - 1  # slice 18 reused, the cleared slice 36 encoded anew
    assert sorted(cached) == sorted(uncached) and all(torch.equal(cached[k], uncached[k]) for k in cached)


def test_half_precision_propagation_matches_float32(net, setup):
    """bfloat16 autocast (the CPU default where the hardware computes it), in both sweep threads: float32
    probabilities, the same slices reached and masks as float32 gives them, up to rounding at the edges."""
    image, label, box, _ = setup
    anchors = anchor_probs(label, box, [27])
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        runs = [propagate(net.memory, SliceFeatures(net.memory, image, box, WORKING_SIZE, torch.device("cpu")),
                          anchors, executor=pool, precision=p) for p in (None, torch.bfloat16)]
    assert sorted(runs[0]) == sorted(runs[1])
    for k in runs[0]:
        assert runs[1][k].dtype == torch.float32
        a, b = runs[0][k] > 0.5, runs[1][k] > 0.5
        assert (a ^ b).sum() <= 0.03 * max(int((a | b).sum()), 100), k
    for k in (19, 35):
        assert slice_dice(runs[1][k], label, box, k) > 0.7, k


def test_propagation_precision_by_device():
    assert propagation_precision("auto", torch.device("cuda")) == torch.float16
    assert propagation_precision("float32", torch.device("cpu")) is None
    assert propagation_precision("bfloat16", torch.device("cpu")) == torch.bfloat16
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert propagation_precision("auto", torch.device("cpu")) == (torch.bfloat16 if native else None)
    with pytest.raises(ValueError):
        propagation_precision("int8", torch.device("cpu"))


def test_parallel_sweeps_give_the_sequential_result(net, setup):
    """The two sweeps run in two threads on the CPU and share the slice-feature cache: same answer as one thread."""
    image, label, box, _ = setup
    anchors = anchor_probs(label, box, [18, 36])
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        runs = [propagate(net.memory, SliceFeatures(net.memory, image, box, WORKING_SIZE, torch.device("cpu")),
                          anchors, executor=executor) for executor in (None, pool)]
    assert sorted(runs[0]) == sorted(runs[1]) and len(runs[0]) > 25
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k


def test_cpu_threads_are_split_between_the_sweeps() -> None:
    """Without a GPU the app gives torch half of its default threads (each sweep one half); the conf overrides."""
    from lib.configs.limnet import TORCH_DEFAULT_THREADS, LimNetConfig

    before = torch.get_num_threads()
    try:
        LimNetConfig._set_cpu_threads("3")
        assert torch.get_num_threads() == 3
        if not torch.cuda.is_available():
            LimNetConfig._set_cpu_threads(None)
            LimNetConfig._set_cpu_threads(None)  # idempotent: init may run twice in one process
            assert torch.get_num_threads() == max(1, TORCH_DEFAULT_THREADS // 2)
    finally:
        torch.set_num_threads(before)


def test_stops_where_the_object_ends(net, setup):
    image, label, box, feats = setup
    cfg = PropagationConfig()
    out = propagate(net.memory, feats, anchor_probs(label, box, [27]), cfg)
    # the object spans slices 15..40: sweeps end a few slices past it instead of running to the volume's ends
    assert max(out) <= 40 + cfg.patience + 3
    assert min(out) >= 15 - cfg.patience - 3
    assert all(float((out[k] > 0.5).sum()) < cfg.stop_area for k in out if k > 42 or k < 13)


def test_uncertainty_is_low_for_an_outline_and_high_for_a_blur():
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    r = ((yy - 32) ** 2 + (xx - 32) ** 2).sqrt()
    sharp = torch.sigmoid((12 - r) * 4)
    blur = torch.sigmoid((12 - r) / 6)
    assert uncertainty(sharp) < 0.15 < 0.6 < uncertainty(blur)
    assert uncertainty(torch.zeros(64, 64)) == 0.0


def test_a_sweep_past_its_anchor_ends_on_uncertain_slices(net, setup):
    image, label, box, feats = setup
    anchors = anchor_probs(label, box, [27])
    full = propagate(net.memory, feats, anchors, PropagationConfig(uncertain_stop=None))
    # every slice counts as uncertain: each sweep keeps its two reference slices and drops the run that ends it
    cut = propagate(net.memory, feats, anchors,
                    PropagationConfig(uncertain_stop=-1.0, uncertain_run=2, uncertain_rise=None))
    assert sorted(cut) == [25, 26, 27, 28, 29]
    for k in cut:
        assert torch.equal(cut[k], full[k])
    # a threshold no slice reaches changes nothing
    same = propagate(net.memory, feats, anchors, PropagationConfig(uncertain_stop=1.0))
    assert sorted(same) == sorted(full) and all(torch.equal(same[k], full[k]) for k in full)


def test_a_round_may_turn_the_blur_stop_off(net) -> None:
    """`add_clicks(stop_at_blur=False)` answers as a segmenter without `uncertain_stop` (Slicer's and OHIF's
    per-request option), and records it in the state's settings so that the same clicks with the option changed are
    computed afresh by the server."""
    image, label = capsule_volume()
    eager = LimNetSegmenter(net, "cpu", use_fusion=False,
                            propagation=PropagationConfig(uncertain_stop=-1.0, uncertain_rise=None))
    plain = LimNetSegmenter(net, "cpu", use_fusion=False, propagation=PropagationConfig(uncertain_stop=None))
    click = [(48, 48, 27)]
    stopped = eager.add_clicks(eager.new_state(image), click, [])
    state = eager.new_state(image)
    off = eager.add_clicks(state, click, [], stop_at_blur=False)
    assert np.array_equal(off, plain.add_clicks(plain.new_state(image), click, []))
    assert off.sum() > stopped.sum() and state.settings[2] is False
    assert np.flatnonzero(stopped.any((0, 1))).tolist() == [25, 26, 27, 28, 29]


def test_a_round_may_turn_the_refiner_off(net) -> None:
    """`add_clicks(use_refiner=False)` answers a later click as a segmenter without the refiner does (the per-request
    option), records it in the state's settings, and the next round without the option uses the refiner again."""
    image, label = capsule_volume(seed=3)
    first, later = [(48, 44, 20)], [(48, 44, 20), (50, 52, 20)]
    with_refiner = LimNetSegmenter(net, "cpu", use_fusion=False)
    without = LimNetSegmenter(net, "cpu", use_fusion=False, use_refiner=False)
    answers = {}
    for name, seg, option in (("on", with_refiner, None), ("off", without, None), ("asked off", with_refiner, False)):
        state = seg.new_state(image)
        seg.add_clicks(state, first, [])
        answers[name] = seg.add_clicks(state, later, [], use_refiner=option)
        assert state.settings[3] is (option is None and seg is with_refiner)
    assert np.array_equal(answers["asked off"], answers["off"])
    state = with_refiner.new_state(image)
    with_refiner.add_clicks(state, first, [], use_refiner=False)
    assert np.array_equal(with_refiner.add_clicks(state, later, []), answers["on"]) and state.settings[3] is True


def test_round_fusion_keeps_the_better_slice(net):
    image, label = capsule_volume()
    fusion = RoundFusion(net.scorer, torch.device("cpu"))
    good = label.copy()
    bad = label.copy()
    bad[:, :, 27] = False
    bad[30:70, 20:70, 27] = True  # a bloated, shifted mask on one slice
    fused, kept = fusion.fuse(image, prev=good, new=bad, clicked=set())
    assert 27 in kept and (fused[:, :, 27] == good[:, :, 27]).all()
    fused, kept = fusion.fuse(image, prev=bad, new=good, clicked=set())
    assert 27 not in kept and (fused[:, :, 27] == good[:, :, 27]).all()
    fused, kept = fusion.fuse(image, prev=good, new=bad, clicked={27})
    assert 27 not in kept, "a clicked slice always takes the newest round"


def test_segmenter_rounds_never_fall_far(net):
    image, label = capsule_volume(seed=3)
    seg = LimNetSegmenter(net)
    state = seg.new_state(image)
    fg, bg, scores = [], [], []
    pred = np.zeros(label.shape, bool)
    for _ in range(4):
        idx, pos = next_click(pred, label)
        (fg if pos else bg).append(idx)
        pred = seg.add_clicks(state, fg, bg)
        scores.append(dice(pred, label))
    assert pred.shape == label.shape
    assert scores[0] > 0.6 and scores[-1] > 0.75, scores
    assert all(b >= a - 0.05 for a, b in zip(scores, scores[1:])), scores


def test_negative_click_on_a_leak_keeps_the_object_core() -> None:
    """A negative click on a lobe grown onto the object points at the lobe: the core away from it is kept as a
    positive cue; a click in the middle of a lone blob (a false object) leaves no core, so the blob goes."""
    x, y = np.ogrid[:80, :80]
    core = (x - 30) ** 2 + (y - 30) ** 2 < 15**2
    lobe = (x - 30) ** 2 + (y - 52) ** 2 < 6**2
    found = LimNetSegmenter._core_away_from(core | lobe, [(30, 53)])
    assert found is not None and core[found] and (found[0] - 30) ** 2 + (found[1] - 30) ** 2 < 5**2
    assert LimNetSegmenter._core_away_from(core, [(30, 30)]) is None


def test_a_negative_click_takes_a_false_object_whole_but_only_a_disc_of_a_rim() -> None:
    """`_reached`: a click at the thickest point of a component (a false object) takes all of it; a click on a thin
    part of a thicker one (a rim grown onto the object, with no deep part left away from the click) takes only a
    disc about as wide as the click is deep, so the object's body stays."""
    x, y = np.ogrid[:80, :80]
    blob = (x - 40) ** 2 + (y - 40) ** 2 < 12**2
    assert np.array_equal(LimNetSegmenter._reached(blob, [(40, 41)], 3.0), blob)
    body = (x - 40) ** 2 + (y - 40) ** 2 < 8**2
    rim = (np.abs(x - 40) <= 1) & (y >= 40) & (y < 75)  # a 3-pixel band leaving the body
    taken = LimNetSegmenter._reached(body | rim, [(40, 70)], 3.0)
    assert taken[40, 70] and taken[40, 66] and not taken[40, 58] and not (taken & body).any()
    assert not LimNetSegmenter._reached(body | rim, [(40, 70)], 3.0)[40, 40]


def test_a_positive_click_only_adds_on_its_slice(net) -> None:
    """A positive click on a slice the last round reached keeps that slice's mask and adds what it points at: the
    interaction module, which sees only the clicks, would answer from scratch and could drop what was found."""
    from lib.engine.geometry import Box
    from lib.engine.state import InteractionState

    rng = np.random.default_rng(0)
    x, y = np.ogrid[:64, :64]
    found = ((x - 20) ** 2 + (y - 20) ** 2 < 8**2)[:, :, None] & (np.arange(12) > 0)  # last round's object
    missed = ((x - 44) ** 2 + (y - 44) ** 2 < 6**2)[:, :, None] & (np.arange(12) > 0)  # a part it missed
    image = (0.2 + 0.6 * (found | missed) + rng.normal(0, 0.03, found.shape)).astype(np.float32)
    state = InteractionState(image=image, mask=found.copy())
    seg = LimNetSegmenter(net, "cpu", use_fusion=False)
    box = Box(0, 0, 64)
    prompt = seg._added(state, box, 6, [(44, 44)])
    assert prompt[found[:, :, 6]].all(), "what the last round found on the slice stays"
    assert prompt[44, 44] and prompt[missed[:, :, 6]].mean() > 0.8, "the clicked part is added"
    assert seg._added(InteractionState(image=image), box, 6, [(44, 44)]) is None  # first round: the module answers


def test_a_round_leaves_slices_nearer_to_earlier_clicks_alone() -> None:
    """Local rounds: a new click on slice 20 re-decides slices 15.. (15 is a tie: the new click wins); slices
    up to 14 are nearer to slice 10's earlier click and stay as the last round had them."""
    from lib.engine.state import InteractionState

    state = InteractionState(image=np.zeros((8, 8, 30), np.float32), foreground=[(1, 1, 10)])
    assert LimNetSegmenter._settled_slices(state, [(1, 1, 10), (2, 2, 20)], []) == []  # no last round yet
    state.mask = np.ones((8, 8, 30), bool)
    assert LimNetSegmenter._settled_slices(state, [(1, 1, 10), (2, 2, 20)], []) == list(range(15))
    assert LimNetSegmenter._settled_slices(state, [(1, 1, 10)], [(3, 3, 10)]) == []  # the same slice again
    state.foreground = [(1, 1, 10), (2, 2, 20)]  # the same voxel clicked again re-decides its own stretch
    assert LimNetSegmenter._settled_slices(state, [(1, 1, 10), (2, 2, 20), (1, 1, 10)], []) == list(range(16, 30))


def test_only_a_positive_round_that_finds_more_reaches_past_its_stretch() -> None:
    """`positive_global`: positive clicks alone, one on a voxel the last mask missed, re-propagate every slice (no
    settled slices); a positive click inside the mask, a negative or a mixed round stays local."""
    from lib.engine.state import InteractionState

    seg = LimNetSegmenter
    state = InteractionState(image=np.zeros((8, 8, 30), np.float32), foreground=[(1, 1, 10)])
    state.mask = np.zeros((8, 8, 30), bool)
    state.mask[:4, :, :] = True
    assert seg._finds_more(state, [(1, 1, 10), (6, 6, 20)], [])  # missed voxel
    assert not seg._finds_more(state, [(1, 1, 10), (2, 2, 20)], [])  # already in the mask
    assert not seg._finds_more(state, [(1, 1, 10)], [(6, 6, 20)])  # negative
    assert not seg._finds_more(state, [(1, 1, 10), (6, 6, 20)], [(7, 7, 25)])  # mixed


def test_a_later_click_propagates_only_its_own_stretch(net) -> None:
    """With local rounds a click on slice 20 after one on slice 10 leaves slices 0-14 exactly as they were and
    keeps the mask inside its tracked region, in the Fortran order the NRRD writer sends."""
    rng = np.random.default_rng(0)
    x, y, z = np.ogrid[:48, :48, :32]
    label = ((x - 24) ** 2 + (y - 24) ** 2 < 100) & (z > 3) & (z < 28)
    image = (label * 1.0 + rng.normal(0, 0.2, label.shape)).astype(np.float32)
    seg = LimNetSegmenter(net, "cpu", use_fusion=False)
    state = seg.new_state(image)
    first = seg.add_clicks(state, [(24, 24, 10)], []).copy()
    second = seg.add_clicks(state, [(24, 24, 10), (24, 24, 20)], [])
    assert np.array_equal(first[:, :, :15], second[:, :, :15])
    assert second.flags.f_contiguous and state.region is not None and second[state.region].sum() == second.sum()


def test_negative_clicks_far_from_the_positive_one_keep_their_stretch(net) -> None:
    """A local round pastes only the slices it re-decides, and its sweeps start at the nearest clicked slice, here
    one with only a negative click; whether those slices connect to a positive click is judged with the settled
    slices in place. Judged without them (until 2026-12-02), a second negative click on a background pixel, 10
    slices from the only positive click, dropped the object from its whole stretch of slices."""
    image, label = capsule_volume()
    seg = LimNetSegmenter(net, "cpu", use_fusion=False)
    state = seg.new_state(image)
    first = seg.add_clicks(state, [(48, 44, 20)], []).copy()
    assert first[:, :, 29:37].sum() > 0.5 * label[:, :, 29:37].sum()
    seg.add_clicks(state, [(48, 44, 20)], [(5, 5, 27)])
    third = seg.add_clicks(state, [(48, 44, 20)], [(5, 5, 27), (5, 5, 30)])
    assert not third[5, 5, 30]
    assert third[:, :, 29:].sum() >= 0.9 * first[:, :, 29:].sum()


def test_negative_claim_follows_intensity_edges():
    """A negative click on the organ around a clicked lesion takes back the organ, not the lesion: the split
    follows the edge between them, not the half-way line between the clicks; parts without a click stay."""
    from lib.engine.geometry import negative_claim

    rng = np.random.default_rng(0)
    frame = np.full((96, 96), 0.2, np.float32)
    yy, xx = np.mgrid[:96, :96]
    organ = (xx - 48) ** 2 + (yy - 48) ** 2 <= 40**2
    lesion = (xx - 60) ** 2 + (yy - 48) ** 2 <= 10**2
    frame[organ] = 0.5
    frame[lesion] = 0.8
    frame += rng.normal(0, 0.02, frame.shape).astype(np.float32)
    # clicks are (axis 0, axis 1) = (row, column): the lesion's centre and a point of the organ 15 pixels from its edge
    claim = negative_claim(frame, organ, [(48, 60)], [(48, 35)], weight=100.0)
    halfway = negative_claim(frame, organ, [(48, 60)], [(48, 35)], weight=0.0)  # no edge term: the half-way line
    assert not claim[lesion].any()
    assert claim[organ & (xx < 50)].all() and not claim[~organ].any()
    assert claim[organ & ~lesion].mean() > halfway[organ & ~lesion].mean() + 0.2
    apart = organ & ~((xx > 40) & (xx < 44))  # a cut through the organ: the part without a click is not taken
    assert not negative_claim(frame, apart, [(48, 60)], [(48, 20)], weight=100.0)[apart & (xx > 44)].any()


def test_negative_claim_takes_the_part_around_a_hole_at_the_click():
    """The interaction module often answers a negative click inside what it segments with a small hole at the
    click: the claim is then the part around that hole (a look-alike lobe), not nothing."""
    from lib.engine.geometry import negative_claim

    rng = np.random.default_rng(1)
    frame = np.full((96, 96), 0.2, np.float32)
    yy, xx = np.mgrid[:96, :96]
    target = (xx - 55) ** 2 + (yy - 55) ** 2 <= 20**2
    lobe = ((xx - 25) ** 2 + (yy - 28) ** 2 <= 14**2) & ~target
    frame[target | lobe] = 0.6
    frame[ndi.binary_dilation(target, iterations=1) & lobe] = 0.45  # a faint seam between the look-alikes
    frame += rng.normal(0, 0.02, frame.shape).astype(np.float32)
    hole = (xx - 24) ** 2 + (yy - 26) ** 2 <= 3**2
    answer = (target | lobe) & ~hole
    claim = negative_claim(frame, answer, [(55, 55)], [(26, 24)], weight=100.0)
    assert claim[lobe & ~hole].mean() > 0.9 and not claim[target].any() and not claim[hole].any()


def test_a_clicked_slice_prompt_keeps_only_what_the_clicks_point_at() -> None:
    """The interaction module answers a click on grey matter with patches of grey matter all over its box; the
    prompt keeps the component the click falls on, one that encloses the click (a ring around a dark centre) and,
    with `fragments`, pieces nearer than the kept part's radius; it drops the rest. An answer the click falls
    outside of stays as it is."""
    from lib.engine.geometry import clicked_components

    yy, xx = np.mgrid[:64, :64]
    blob = (xx - 20) ** 2 + (yy - 20) ** 2 <= 6**2
    patch = (xx - 50) ** 2 + (yy - 50) ** 2 <= 5**2
    ring = ((xx - 44) ** 2 + (yy - 16) ** 2 <= 9**2) & ((xx - 44) ** 2 + (yy - 16) ** 2 > 4**2)
    prob = torch.from_numpy((0.9 * (blob | patch | ring)).astype(np.float32))
    kept = clicked_components(prob, [(20.0, 20.0)]).numpy() > 0.5
    assert kept[blob].all() and not kept[patch | ring].any()
    kept = clicked_components(prob, [(16.0, 44.0)]).numpy() > 0.5  # (row, column): the ring's dark centre
    assert kept[ring].all() and not kept[blob | patch].any()
    assert torch.equal(clicked_components(prob, [(5.0, 60.0)]), prob)
    piece = (xx - 20) ** 2 + (yy - 31) ** 2 <= 3**2  # 2 pixels from the blob: a piece of the clicked object
    prob = torch.from_numpy((0.9 * (blob | patch | piece)).astype(np.float32))
    kept = clicked_components(prob, [(20.0, 20.0)], fragments=1.0).numpy() > 0.5
    assert kept[blob | piece].all() and not kept[patch].any()
    assert not (clicked_components(prob, [(20.0, 20.0)]).numpy() > 0.5)[piece].any()


def test_a_slice_not_clicked_again_can_keep_its_answer(net) -> None:
    """`keep_answered` (off by default): a clicked slice whose clicks are those of the last round, and whose last
    mask holds them, is prompted with that mask; a slice with a new click, or whose mask misses its click, is not."""
    from lib.engine.state import InteractionState

    mask = np.zeros((16, 16, 8), bool)
    mask[4:10, 4:10, 2] = True
    state = InteractionState(image=np.zeros((16, 16, 8), np.float32), mask=mask, foreground=[(6, 6, 2), (1, 1, 5)])
    seg = LimNetSegmenter(net, "cpu", use_fusion=False, keep_answered=True)
    assert np.array_equal(seg._answered(state, 2, [(6, 6)], []), mask[:, :, 2])
    assert seg._answered(state, 2, [(6, 6), (8, 8)], []) is None  # clicked again
    assert seg._answered(state, 5, [(1, 1)], []) is None  # the last mask misses the click
    assert seg._answered(InteractionState(image=state.image), 2, [(6, 6)], []) is None  # first round


def test_a_slice_not_clicked_again_keeps_its_prompt_in_the_same_box(net) -> None:
    """`keep_in_box` (the default): an earlier clicked slice without new clicks is prompted with the last round's
    mask there while the round works in the last round's box, edits included (here: the part a negative click took
    off a disc); in another box it is answered afresh."""
    from lib.engine.state import InteractionState

    rng = np.random.default_rng(0)
    x, y = np.ogrid[:64, :64]
    disc = ((x - 32) ** 2 + (y - 32) ** 2 < 12**2)[:, :, None] & (np.arange(12) > 0)
    image = (0.2 + 0.6 * disc + rng.normal(0, 0.03, disc.shape)).astype(np.float32)
    last = disc.copy()
    last[:, 36:, 6] = False  # what a negative click at (32, 40) took on slice 6
    box = Box(0, 0, 64)
    state = InteractionState(image=image, mask=last, foreground=[(32, 28, 6)], background=[(32, 40, 6)], box=box)
    pos, neg = [(32, 28)], [(32, 40)]
    seg = LimNetSegmenter(net, "cpu", use_fusion=False)
    kept = seg._anchor(state, box, 6, pos, neg)
    assert torch.equal(kept, seg._working(last[:, :, 6], box)), "same box, same clicks: the last mask, edit and all"
    other = Box(4, 4, 56)
    fresh = seg._anchor(state, other, 6, pos, neg)
    assert torch.equal(fresh, seg._fresh_anchor(state, other, 6, pos, neg))
    assert not torch.equal(fresh, seg._working(last[:, :, 6], other)), "another box: answered again"
    off = LimNetSegmenter(net, "cpu", use_fusion=False, keep_in_box=False)
    assert torch.equal(off._anchor(state, box, 6, pos, neg), off._fresh_anchor(state, box, 6, pos, neg))


def test_an_added_part_cut_by_the_box_or_spanning_the_slice_is_implausible() -> None:
    """`guard_adds`: a positive click's added part is checked as a first click's answer is: the box cuts it where
    it reaches an edge of the box inside the image (not at the image's border), or it spans most of the slice."""
    box = Box(16, 16, 32)  # [16, 48) in a 96 x 96 slice
    assert not LimNetSegmenter._implausible((20, 40, 20, 40), box, (96, 96))
    assert LimNetSegmenter._implausible((16, 40, 20, 40), box, (96, 96))  # runs into the box's top edge
    assert not LimNetSegmenter._implausible((0, 20, 20, 40), Box(0, 16, 32), (96, 96))  # the image's border
    assert LimNetSegmenter._implausible((2, 90, 2, 60), Box(0, 0, 96), (96, 96))  # 89 of 96 pixels across


def test_a_round_moves_the_result_only_the_way_its_clicks_point(net) -> None:
    """`positive_union` / `negative_subset`: after positive clicks alone nothing the last round had is lost, after
    negative clicks alone nothing new comes in; a round with both, or clicks that do not extend the last ones, is
    left as it is."""
    from lib.engine.state import InteractionState

    old = np.zeros((16, 16, 8), bool, order="F")
    old[2:8, 2:8, 1:5] = True
    new = np.zeros_like(old)
    new[5:12, 5:12, 2:7] = True
    state = InteractionState(image=np.zeros((16, 16, 8), np.float32), mask=old, foreground=[(4, 4, 2)],
                             region=(slice(2, 8), slice(2, 8), slice(1, 5)))
    # the footprint rule (tested below) would keep the removal off the clicked slice, which holds none of `old`
    seg = LimNetSegmenter(net, "cpu", use_fusion=False, negative_footprint=None)
    everything = (slice(0, 16), slice(0, 16), slice(0, 8))
    out = new.copy()
    region = seg._one_way(state, out, (slice(5, 12), slice(5, 12), slice(2, 7)), [(4, 4, 2), (9, 9, 5)], [])
    assert np.array_equal(out, old | new) and out[region].sum() == out.sum()
    out = new.copy()
    seg._one_way(state, out, everything, [(4, 4, 2)], [(10, 10, 6)])
    assert np.array_equal(out, old & new)
    for fg, bg in (([(4, 4, 2), (9, 9, 5)], [(10, 10, 6)]), ([(9, 9, 5)], [])):  # both kinds; a new interaction
        out = new.copy()
        seg._one_way(state, out, everything, fg, bg)
        assert np.array_equal(out, new)
    off = LimNetSegmenter(net, "cpu", use_fusion=False, positive_union=False, negative_subset=False)
    out = new.copy()
    off._one_way(state, out, everything, [(4, 4, 2), (9, 9, 5)], [])
    assert np.array_equal(out, new)


def test_later_positive_clicks_keep_what_was_found(net) -> None:
    """End to end on the capsule: a second positive click's answer holds the first one's."""
    image, label = capsule_volume(seed=1)
    seg = LimNetSegmenter(net, "cpu", use_fusion=False)
    state = seg.new_state(image)
    first = seg.add_clicks(state, [(48, 44, 20)], []).copy()
    second = seg.add_clicks(state, [(48, 44, 20), (48, 44, 36)], [])
    assert first.any() and not (first & ~second).any()


def test_a_new_negative_click_on_a_clicked_slice_only_trims(net) -> None:
    """`slice_one_way`: a negative click on a slice that already held a positive click edits the last round's mask
    there: the component it falls on loses what it points at, the other component stays (answered afresh, the
    module kept only what the positive click fell on); the earlier positive click's part stays."""
    from lib.engine.geometry import Box
    from lib.engine.state import InteractionState

    rng = np.random.default_rng(0)
    x, y = np.ogrid[:64, :64]
    upper = ((x - 16) ** 2 + (y - 20) ** 2 < 8**2)[:, :, None] & (np.arange(12) > 0)  # found, no click on it
    lower = ((x - 44) ** 2 + (y - 40) ** 2 < 9**2)[:, :, None] & (np.arange(12) > 0)  # found, clicked
    leak = ((x - 44) >= -2) & ((x - 44) <= 2) & (y >= 49) & (y < 60)  # a thin leak grown onto it
    last = upper | lower
    last[:, :, 6] |= leak
    image = (0.2 + 0.6 * (upper | lower) + rng.normal(0, 0.03, last.shape)).astype(np.float32)
    state = InteractionState(image=image, mask=last.copy(), foreground=[(44, 40, 6)])
    box = Box(0, 0, 64)
    pos, neg = [(44, 40)], [(44, 57)]
    from lib.engine.geometry import paste_slices

    def answer(seg):  # the prompt, back on the 64 x 64 slice
        return paste_slices(seg._fresh_anchor(state, box, 6, pos, neg)[None], box, (64, 64))[:, :, 0] > 0.5

    prompt = answer(LimNetSegmenter(net, "cpu", use_fusion=False))
    assert prompt[upper[:, :, 6]].all(), "the component the click is not on stays as it was"
    assert prompt[lower[:, :, 6]].mean() > 0.8 and not prompt[44, 57], "the clicked component loses the leak"
    assert not answer(LimNetSegmenter(net, "cpu", use_fusion=False, slice_one_way=False))[upper[:, :, 6]].any()


def test_positive_clicks_inside_the_object_do_not_lengthen_it(net) -> None:
    """`extend_slices`: a round of positive clicks on slices inside the last mask's range keeps what it adds within
    2 slices of the range's ends; a click at an end may lengthen the object that way."""
    from lib.engine.state import InteractionState

    old = np.zeros((16, 16, 30), bool, order="F")
    old[4:10, 4:10, 10:20] = True
    state = InteractionState(image=np.zeros(old.shape, np.float32), mask=old, foreground=[(6, 6, 15)],
                             region=(slice(4, 10), slice(4, 10), slice(10, 20)))
    seg = LimNetSegmenter(net, "cpu", use_fusion=False)
    everything = (slice(0, 16), slice(0, 16), slice(0, 30))
    new = np.zeros_like(old)
    new[3:11, 3:11, 0:30] = True  # the round ran on along the slices both ways
    out = new.copy()
    seg._one_way(state, out, everything, [(6, 6, 15), (9, 9, 14)], [])
    assert np.nonzero(out.any((0, 1)))[0].tolist() == list(range(8, 22))
    out = new.copy()
    seg._one_way(state, out, everything, [(6, 6, 15), (9, 9, 19)], [])  # a click at the last slice: up is open
    assert np.nonzero(out.any((0, 1)))[0].tolist() == list(range(8, 30))
    out = new.copy()
    LimNetSegmenter(net, "cpu", use_fusion=False, extend_slices=None)._one_way(state, out, everything,
                                                                               [(6, 6, 15), (9, 9, 14)], [])
    assert out.all(2)[3:11, 3:11].all()


def test_negative_clicks_remove_elsewhere_only_under_what_they_removed_on_their_slice(net) -> None:
    """`negative_footprint` 0 (off by default since 2026-12-06): after negative clicks alone, what the round removed on
    other slices comes back outside the footprint of its removal on the clicked slice (widened by 2 pixels); inside it
    the removal stands."""
    from lib.engine.state import InteractionState

    old = np.zeros((32, 32, 10), bool, order="F")
    old[4:28, 4:28, 2:8] = True
    state = InteractionState(image=np.zeros(old.shape, np.float32), mask=old, foreground=[(16, 16, 5)],
                             region=(slice(4, 28), slice(4, 28), slice(2, 8)))
    new = old.copy()
    new[4:8, 4:28, 5] = False  # the clicked slice loses a rim
    new[4:8, 4:28, 3:5] = False  # the slices below lose the same rim
    new[10:20, 10:20, 6:8] = False  # and the slices above a hole in the core
    everything = (slice(0, 32), slice(0, 32), slice(0, 10))
    out = new.copy()
    footprint = LimNetSegmenter(net, "cpu", use_fusion=False, negative_footprint=0.0)
    footprint._one_way(state, out, everything, [(16, 16, 5)], [(5, 16, 5)])
    assert not out[4:8, 4:28, 3:6].any(), "the rim goes on the clicked slice and under it"
    assert out[10:20, 10:20, 6:8].all(), "the core's hole away from the removed rim is filled again"
    assert not out[5, 16, 5]
    out = new.copy()
    LimNetSegmenter(net, "cpu", use_fusion=False, negative_keep_under=None)._one_way(
        state, out, everything, [(16, 16, 5)], [(5, 16, 5)])
    assert np.array_equal(out, new)  # the default, None: off (`negative_keep_under` off too: it fills the hole)


def test_negative_clicks_leave_unclicked_slices_the_object_their_slice_kept(net) -> None:
    """`negative_keep_under`: after negative clicks alone, an unclicked slice whose mask the memory re-propagated from
    the carved prompt gets back what it lost in-plane under what the clicked slice kept; what it lost under what the
    clicked slice lost stays off (a leak there), and the clicked slice is as the round made it."""
    from lib.engine.state import InteractionState

    old = np.zeros((32, 32, 10), bool, order="F")
    old[8:20, 8:20, 2:8] = True  # the object
    old[20:28, 8:20, 3:7] = True  # a leak beside it
    state = InteractionState(image=np.zeros(old.shape, np.float32), mask=old, foreground=[(14, 14, 5)],
                             region=(slice(8, 28), slice(8, 20), slice(2, 8)))
    new = old.copy()
    new[20:28, 8:20, 3:7] = False  # the click in the leak on slice 5 takes it off there and on the slices around
    new[8:20, 8:20, 4] = False  # the slice below collapses as well: its memory read the carved prompt badly
    new[8:20, 8:15, 6] = False
    new[14, 14, 5] = True
    everything = (slice(0, 32), slice(0, 32), slice(0, 10))
    out = new.copy()
    LimNetSegmenter(net, "cpu", use_fusion=False, negative_keep_under=0)._one_way(
        state, out, everything, [(14, 14, 5)], [(24, 14, 5)])
    assert out[8:20, 8:20, 4].all() and out[8:20, 8:20, 6].all(), "the object under the kept prompt comes back"
    assert not out[20:28, 8:20, 3:7].any(), "the leak stays off on every slice"
    assert np.array_equal(out[:, :, 5], new[:, :, 5]) and not out[24, 14, 5]
    out = new.copy()
    LimNetSegmenter(net, "cpu", use_fusion=False, negative_keep_under=None)._one_way(
        state, out, everything, [(14, 14, 5)], [(24, 14, 5)])
    assert np.array_equal(out, new)  # None: off
    # `keep_under_clicked`: only under kept parts that hold a positive click of the clicked slice
    confirmed = LimNetSegmenter(net, "cpu", use_fusion=False, keep_under_clicked=True)
    out = new.copy()
    confirmed._one_way(state, out, everything, [(14, 14, 5)], [(24, 14, 5)])
    assert out[8:20, 8:20, 4].all() and not out[20:28, 8:20, 3:7].any()
    elsewhere = InteractionState(image=state.image, mask=old, foreground=[(14, 14, 2)], region=state.region)
    out = new.copy()
    confirmed._one_way(elsewhere, out, everything, [(14, 14, 2)], [(24, 14, 5)])
    assert np.array_equal(out, new), "a carved slice without a positive click vouches for nothing"


def ct_body_with_organ(depth: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-sized stack in HU: an elliptic body (40) in air (-1000) with other soft tissues, and an organ (120)
    half the slice across."""
    rng = np.random.default_rng(seed)
    x, y, z = np.ogrid[:512, :512, :depth]
    body = ((x - 256) / 230.0) ** 2 + ((y - 256) / 205.0) ** 2 < 1
    organ = ((x - 256) / 120.0) ** 2 + ((y - 256) / 96.0) ** 2 + ((z - depth / 2) / (depth / 3)) ** 2 < 1
    image = np.where(body, 40.0, -1000.0) + np.zeros((1, 1, depth))
    for _ in range(4):
        dx, dy = rng.uniform(-150, 150, 2)
        r = rng.uniform(10, 40)
        image[((x - 256 - dx) / r) ** 2 + ((y - 256 - dy) / r) ** 2 + ((z - depth / 2) / (r * 2)) ** 2 < 1] = \
            rng.uniform(-100, 200)
    image[organ] = 120.0
    return (image + rng.normal(0, 12, image.shape)).astype(np.float32), organ


def test_a_large_first_answer_holding_another_tissue_yields_to_the_search() -> None:
    """`reduced_guard`: the smaller answer wins only where the large one's rest is another tissue (the body around
    an organ), not more of the clicked one (a large organ that a small box saw part of)."""
    rng = np.random.default_rng(0)
    image = np.full((200, 200), 40.0) + rng.normal(0, 5, (200, 200))
    image[50:150, 50:150] = 120.0 + rng.normal(0, 5, (100, 100))
    whole = np.zeros((200, 200), bool)
    whole[20:180, 20:180] = True
    assert LimNetSegmenter._holds_other_tissue(image, whole, (50, 149, 50, 149))  # organ + body around it
    organ = np.zeros((200, 200), bool)
    organ[50:150, 50:150] = True
    assert not LimNetSegmenter._holds_other_tissue(image, organ, (50, 110, 60, 120))  # a part of the organ


def test_an_inner_structure_is_another_tissue_with_an_edge_inside_the_answer() -> None:
    """`inner_pick`: the search's smaller answer is a structure inside the first answer (a lesion in an organ) when
    it differs in intensity from what surrounds it and its outline follows an edge; a patch of the same tissue is
    not."""
    rng = np.random.default_rng(0)
    x, y = np.ogrid[:100, :100]
    organ = (x - 50) ** 2 + (y - 50) ** 2 < 30**2
    lesion = (x - 55) ** 2 + (y - 45) ** 2 < 6**2
    image = 0.2 + 0.3 * organ + 0.3 * lesion + rng.normal(0, 0.01, (100, 100))
    assert LimNetSegmenter._inner_structure(image, organ, lesion, 3.0)
    patch = (x - 40) ** 2 + (y - 60) ** 2 < 6**2  # inside the organ, away from the lesion
    assert not LimNetSegmenter._inner_structure(image, organ, patch, 3.0)
    speck = (x - 40) ** 2 + (y - 60) ** 2 < 3**2
    assert not LimNetSegmenter._inner_structure(image, lesion | speck, lesion, 3.0), "more than half the answer"
    faint = 0.2 + 0.3 * organ + 0.3 * ndi.gaussian_filter(lesion.astype(float), 6) + rng.normal(0, 0.01, (100, 100))
    assert not LimNetSegmenter._inner_structure(faint, organ, lesion, 3.0), "no edge on its outline"


def test_clicks_on_more_of_a_vessel_do_not_ask_for_the_organ_around_it() -> None:
    """`_clicks_like_inner` (`larger_not_around`): a positive click like the first mask's tissue, which differs from
    the rest of the larger answer (a vessel in the liver), asks for more of the vessel; a click on the organ's tissue,
    or a first mask that is a patch of the organ itself, lets the larger answer be chosen (`_larger_reading`)."""
    rng = np.random.default_rng(1)
    x, y = np.ogrid[:100, :100]
    organ = (x - 50) ** 2 + (y - 50) ** 2 < 40**2
    vessel = organ & (np.abs(x - y) < 4)  # a bright diagonal band across the organ
    image = 0.3 + 0.2 * organ + 0.1 * vessel + rng.normal(0, 0.005, (100, 100))
    found = vessel & (x < 45)  # the first answer: part of the vessel
    assert LimNetSegmenter._clicks_like_inner(image, found, organ, [(60, 60, 7)])  # further along the vessel
    assert not LimNetSegmenter._clicks_like_inner(image, found, organ, [(30, 70, 7)])  # on the organ
    patch = organ & ((x - 40) ** 2 + (y - 70) ** 2 < 8**2)  # a patch of the organ's own tissue
    assert not LimNetSegmenter._clicks_like_inner(image, patch, organ, [(60, 30, 7)])


def test_a_first_click_in_a_lesion_inside_an_organ_finds_the_lesion(net) -> None:
    """A generated validation case (nested, seed 777000 + 100 * 18 + 4): a 240-pixel lesion inside an organ. The
    whole-slice pass answers with the organ; the search's answer, the lesion, is another tissue with an edge, and
    wins (`inner_pick`)."""
    from lib.data.synthetic import generate_case

    case = generate_case(np.random.default_rng(777_000 + 100 * 18 + 4), "nested")
    gt = case.label > 0
    click, _ = next_click(np.zeros(gt.shape, bool), gt, case.spacing)
    results = {}
    for pick in (3.0, None):
        seg = LimNetSegmenter(net, "cpu", use_fusion=False, inner_pick=pick)
        results[pick] = dice(seg.add_clicks(seg.new_state(case.image), [click], []), gt)
    assert results[3.0] > 0.9 and results[None] < 0.3, results


def test_a_first_click_on_a_large_organ_in_a_ct_slice_finds_the_organ(net) -> None:
    """A CT slice is seen reduced 4x by the whole-slice pass, which may answer with the organ and the body around it
    or with a disc inside the organ: every first click on such a slice takes the most distinct of its readings
    (`reduced_guard` 0), and the answer in the box that reading set yields to the reading where it lost part of the
    organ (`keep_reading`). 18 first clicks on 6 stacks: with the rules before (`reduced_guard` 0.4, no
    `keep_reading`) 1 found the organ (Dice > 0.85), median Dice 0.05; now 15, median 0.96. Three still fail: the
    most distinct reading is a patch of the organ or the body, by a small margin."""
    found = []
    for seed in range(6):
        image, organ = ct_body_with_organ(seed=seed)
        for click in [(241, 256, 12), (256, 256, 12), (280, 230, 12)]:
            seg = LimNetSegmenter(net, "cpu", use_fusion=False)
            found.append(dice(seg.add_clicks(seg.new_state(image), [click], []), organ))
    assert sum(d > 0.85 for d in found) >= 14 and np.median(found) > 0.9, np.round(found, 2)


def test_a_reading_the_round_box_lost_part_of_is_kept() -> None:
    """`keep_reading`: the first round's prompt is the reading that set its box only where that reading, seen in a box
    no larger, holds more than the box's answer and overlaps it by less than 0.6 (IoU)."""
    seg = LimNetSegmenter.__new__(LimNetSegmenter)
    seg.keep_reading, seg.size, seg.device = 0.6, WORKING_SIZE, torch.device("cpu")
    box = Box(0, 0, WORKING_SIZE)  # working pixels are image pixels
    whole = np.zeros((WORKING_SIZE, WORKING_SIZE), bool)
    whole[20:100, 20:100] = True
    disc = torch.zeros(WORKING_SIZE, WORKING_SIZE)
    disc[50:70, 50:70] = 1.0
    reading = Reading(whole, (20, 99, 20, 99), WORKING_SIZE)
    kept = LimNetSegmenter._kept_reading(seg, disc, reading, box)
    assert torch.equal(kept > 0.5, torch.from_numpy(whole))  # the answer lost most of it: the reading stands
    wide = Reading(whole, (20, 99, 20, 99), 2 * WORKING_SIZE)
    assert LimNetSegmenter._kept_reading(seg, disc, wide, box) is disc  # seen coarser than the box: the answer
    small = Reading(disc.numpy() > 0.5, (50, 69, 50, 69), WORKING_SIZE)
    big = torch.from_numpy(whole).float()
    assert LimNetSegmenter._kept_reading(seg, big, small, box) is big  # a wider answer is the box's to give


def test_an_added_part_keeps_only_what_looks_like_the_object() -> None:
    """`added_like` (off by default): of a positive click's added part only the pixels nearer the object's intensity
    than the background's stay; a faint shadow beside a dark spot goes."""
    image = np.full((40, 40), 0.5, np.float32)
    image[15:25, 15:25] = 0.1  # the spot
    image[15:25, 5:15] = 0.42  # a faint shadow beside it
    last = np.zeros((40, 40), bool)
    last[16:24, 16:23] = True  # found, less a rim
    comp = np.zeros((40, 40), bool)
    comp[15:25, 5:25] = True  # the module's answer to a click on the rim: spot and shadow
    kept = LimNetSegmenter._like_object(image, last, comp)
    assert kept[16:24, 16:24].all() and not kept[15:25, 5:13].any()  # edge pixels blend in the 3x3 mean


def oblique_tube(depth: int = 40, shift: float = 1.6, radius: float = 4.0, seed: int = 3):
    """A bright tube crossing the volume obliquely: its centre moves `shift` pixels per slice in-plane."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(np.arange(128), np.arange(128), np.arange(depth), indexing="ij")
    cx, cy = 32 + shift * z, 40 + 0.5 * shift * z
    label = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
    image = 0.3 + 0.4 * label + rng.normal(0, 0.05, label.shape)
    return image.astype(np.float32), label


def test_propagation_follows_an_object_out_of_its_box(net) -> None:
    """An oblique tube leaves the box sized around its clicked cross-section a few slices away; with `follow` (a
    request's `follow_object`) the first round continues in boxes that move with it and finds the tube much further
    along, without adding anything off it. Without, the sweeps end at the box's edge. With the default first box of
    at least 24 pixels (`first_box_min`) this tube's box is 24 pixels and the upward continuations stop at slice 30
    (Dice with following 0.968 -> 0.816, without 0.662 -> 0.544): the mechanism is checked in a 32-pixel first box
    with the first memory model, and the default only for its gain, with both memory models (the tube is not read
    as a CT, so the MR one serves it: 0.544 -> 0.923 with following; in the 32-pixel box 0.662 -> 0.968; measured
    with the MR memory model of 2026-12-07 evening)."""
    image, label = oblique_tube()
    k = 20
    xs, ys = np.nonzero(label[:, :, k])
    click = [(int(xs.mean()), int(ys.mean()), k)]
    for first_box_min, mr_memory in ((32, False), (None, False), (None, True)):
        answers = {}
        kw = {} if first_box_min is None else {"first_box_min": first_box_min}
        seg = LimNetSegmenter(net, "cpu", use_fusion=False, mr_memory=mr_memory, **kw)
        for follow in (None, 4):  # None: the segmenter's default; 4: as a request asks for it
            state = seg.new_state(image, normalized=True)
            answers[follow or 0] = seg.add_clicks(state, click, [], follow=follow)
        reached = {f: np.nonzero(m.any((0, 1)))[0] for f, m in answers.items()}
        gain = dice(answers[4], label) - dice(answers[0], label)
        assert gain > 0.2, (first_box_min, mr_memory, gain)
        assert (answers[4] & ~label).sum() <= 0.2 * answers[4].sum(), "what it follows is the tube"
        if first_box_min is not None:
            assert reached[4].min() <= reached[0].min() - 5 and reached[4].max() >= reached[0].max() + 5, reached


def test_a_slice_a_negative_round_emptied_between_object_slices_is_bridged() -> None:
    """`_bridge`: an unclicked slice left empty between two that hold object gets the last round's mask there,
    within its neighbours' masks; a clicked slice, a two-slice gap and a slice the last round had empty stay."""
    from lib.engine.state import InteractionState

    old = np.zeros((32, 32, 12), bool, order="F")
    old[6:26, 6:26, 1:11] = True
    old[:, :, 9] = False  # the last round had nothing here
    state = InteractionState(image=np.zeros(old.shape, np.float32), mask=old)
    new = old.copy()
    new[:, :, [3, 5, 7, 8]] = False  # 3: one-slice gap; 5: clicked; 7-8: a two-slice gap
    new[6:26, 6:16, 2] = False  # the slice below 3 holds only half the object now
    everything = (slice(0, 32), slice(0, 32), slice(0, 12))
    out = new.copy()
    LimNetSegmenter._bridge(state, out, everything, {5})
    expected = old[:, :, 3] & (new[:, :, 2] | new[:, :, 4])
    assert np.array_equal(out[:, :, 3], expected) and expected.any() and not expected.all()
    assert not out[:, :, 5].any() and not out[:, :, 7:10].any()
    assert np.array_equal(np.delete(out, 3, axis=2), np.delete(new, 3, axis=2))


def test_a_negative_click_on_a_ct_organ_does_not_remove_it(net) -> None:
    """Validation cases (kind `ct_organ`) where the robot's second or third click is negative on a leak of a found
    organ: the organ stays, with and without gap bridging, in float32 without the later negative-click rules
    (footprint, reach) and with the defaults.

    Until 2026-12-04 this replayed case 9, where the weights of that time lost the organ on the two slices next to
    the negative click's slice in float32 and only the bridging kept it (Dice 0.94 -> 0.02 unbridged, 0.30 bridged).
    With the weights fine-tuned on real organs that day no case of the first 60 seeds of the kind loses a slice
    there (searched), so that path cannot be replayed any more; `_bridge` itself is checked by the test above. Case 2
    replaced case 32 on 2026-12-06: with the refiner module, case 32's robot clicks only positively in three rounds."""
    from lib.data.robot import run_robot
    from lib.data.synthetic import VALIDATION_KINDS, generate_case

    for index in (6, 2):
        case = generate_case(np.random.default_rng(777_000 + 100 * index + VALIDATION_KINDS.index("ct_organ")),
                             "ct_organ")
        for bridge, precision in ((True, "float32"), (False, "float32"), ("default", "auto")):
            earlier = {} if bridge == "default" else dict(negative_footprint=None, negative_reach=None)
            seg = LimNetSegmenter(net, "cpu", use_fusion=False, bridge_gaps=bool(bridge), precision=precision,
                                  **earlier)
            state = seg.new_state(case.image)
            run = run_robot(lambda fg, bg: seg.add_clicks(state, fg, bg), case.label, 3, case.spacing)
            assert len(run.background) >= 1, (index, bridge)
            assert min(run.dice) > 0.9, (index, bridge, run.dice)


def test_bounding_box_is_find_objects_of_one_label() -> None:
    """The projection-based block the round reads equals scipy's `find_objects`, in either memory order."""
    rng = np.random.default_rng(3)
    for trial in range(20):
        shape = tuple(int(n) for n in rng.integers(1, 40, 3))
        mask = rng.random(shape) < rng.choice([0.0, 0.001, 0.05, 0.5])
        for m in (mask, np.asfortranarray(mask)):
            expected = ndi.find_objects(m.view(np.uint8))
            assert bounding_box(m) == (expected[0] if expected else None), (trial, shape)


def test_label_3d_gives_scipys_components() -> None:
    """The fast 3D labelling splits a mask into the very components `scipy.ndimage.label` finds (6-connected)."""
    rng = np.random.default_rng(5)
    for trial in range(12):
        shape = tuple(int(n) for n in rng.integers(2, 30, 3))
        mask = ndi.gaussian_filter(rng.random(shape), 1.0) > rng.uniform(0.45, 0.55)
        for m in (mask, np.asfortranarray(mask)):
            ours, n = label_3d(m)
            ref, n_ref = ndi.label(m)
            assert n == n_ref, trial
            pairs = np.unique(np.stack([ours[m], ref[m]]), axis=1)  # each of ours is exactly one of scipy's
            assert pairs.shape[1] == n and len(set(pairs[0])) == n and len(set(pairs[1])) == n, trial
            assert not ours[~m].any()


def test_distinctness_prefers_an_object_to_a_patch_of_a_larger_one():
    """A disc on a darker background stands out from its surroundings; a small patch inside a large disc of the same
    grey does not (its ring continues its intensity), nor does the background around both."""
    rng = np.random.default_rng(0)
    xx, yy = np.mgrid[:200, :200]
    organ = (xx - 100) ** 2 + (yy - 100) ** 2 < 60 ** 2
    plane = np.where(organ, 1.0, 0.3) + rng.normal(0, 0.03, (200, 200))
    patch = (xx - 100) ** 2 + (yy - 100) ** 2 < 12 ** 2
    body = ((xx - 100) ** 2 + (yy - 100) ** 2 < 90 ** 2) & ~organ
    whole, part, around = (distinctness(plane, m) for m in (organ, patch, body))
    assert whole > 2 * part and whole > 2 * around, (whole, part, around)


def test_a_later_round_leaves_out_negative_clicks_far_outside_the_object():
    """`ignore_outside`: a negative click outside the last box on no voxel of the last mask has nothing to remove
    and must not widen the box; one inside the box, or on the mask beyond it, stays."""
    from lib.engine.state import InteractionState

    mask = np.zeros((100, 100, 5), bool, order="F")
    mask[40:60, 40:60, 2] = True
    mask[60:70, 45:50, 2] = True  # a leak beyond the box
    state = InteractionState(image=np.zeros((100, 100, 5), np.float32), mask=mask, box=Box(35, 35, 26))
    by_slice = {2: ([(50, 50)], [(45, 45), (65, 47), (90, 10)]), 4: ([], [(5, 5)]), 1: ([], [(50, 52)])}
    kept = LimNetSegmenter._without_far_negatives(state, by_slice)
    assert kept == {2: ([(50, 50)], [(45, 45), (65, 47)]), 1: ([], [(50, 52)])}


def test_imaged_area_is_the_body_not_the_field_of_view():
    """What a slice images (a head, a body) is measured without the air around it: a 40-pixel ring of tissue with a
    dark core (a skull around its fluid) covers its disc's area, holes filled, on a 128-pixel slice of dark noisy
    background; the same with 30 more pixels of air around it; a slice with nothing on it images nothing."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    r2 = (yy - 64) ** 2 + (xx - 60) ** 2
    plane = np.where((r2 < 20**2) & (r2 >= 12**2), 1.0, 0.0) + rng.normal(0, 0.02, (128, 128))
    area = imaged_area(plane)
    assert abs(area - np.pi * 20**2) < 0.08 * np.pi * 20**2
    assert imaged_area(np.pad(plane, 30)) == area
    assert imaged_area(np.zeros((50, 70))) is None


def test_a_negative_click_that_empties_its_slice_clears_what_lies_beyond_it(net) -> None:
    """`_cut_beyond`: a newly clicked negative slice the round left (nearly) empty, every positive click on one side
    of it: the slices on its other side go too; a slice that keeps part of its mask, or positive clicks on both
    sides, change nothing."""
    from lib.engine.state import InteractionState

    old = np.zeros((32, 32, 24), bool, order="F")
    old[8:24, 8:24, 2:22] = True  # the last round: an object on 8-15 that ran on to 2 and to 21
    state = InteractionState(image=np.zeros(old.shape, np.float32), mask=old)
    everything = (slice(0, 32), slice(0, 32), slice(0, 24))
    seg = LimNetSegmenter(net, "cpu", use_fusion=False)
    assert seg.cut_beyond == 0.05
    new = old.copy()
    new[:, :, 5] = False
    new[8, 8, 5] = True  # one pixel of 256 left on the clicked slice
    out = new.copy()
    seg._cut_beyond(state, out, everything, [(16, 16, 12)], [(12, 12, 5)])
    assert not out[:, :, :6].any() and np.array_equal(out[:, :, 6:], new[:, :, 6:])
    out = new.copy()  # positive clicks on both sides of it
    seg._cut_beyond(state, out, everything, [(16, 16, 12), (16, 16, 3)], [(12, 12, 5)])
    assert np.array_equal(out, new)
    new[8:12, 8:24, 18] = True
    new[12:, :, 18] = False  # a quarter of the slice left: the click removed part of it only
    out = new.copy()
    seg._cut_beyond(state, out, everything, [(16, 16, 12)], [(20, 20, 18)])
    assert np.array_equal(out, new)
    new[:, :, 18] = False  # emptied: the slices above it go
    out = new.copy()
    seg._cut_beyond(state, out, everything, [(16, 16, 12)], [(20, 20, 18)])
    assert not out[:, :, 18:].any() and np.array_equal(out[:, :, :18], new[:, :, :18])


def test_a_fresh_refiner_answers_as_the_interaction_module(net, tmp_path) -> None:
    """`LimNet.add_refiner`: a copy of the interaction module that also reads the last mask, its weights on that
    channel zero until trained; a later round with it gives the rounds without it, and it survives save and load."""
    import copy

    from lib.net.bundle import LimNet

    image, _ = capsule_volume(seed=1)
    net = copy.deepcopy(net)
    net.refiner = None  # the committed weights have a trained one
    with_refiner = copy.deepcopy(net)
    with_refiner.add_refiner()
    assert with_refiner.refiner.takes_mask and not with_refiner.interaction.takes_mask
    x = torch.rand(2, 5, 64, 64)
    prior = (torch.rand(2, 1, 64, 64) > 0.5).float()
    assert torch.allclose(with_refiner.refiner(x, prior), net.interaction(x), atol=1e-5)
    masks = []
    for bundle in (net, with_refiner):
        seg = LimNetSegmenter(bundle, "cpu", use_fusion=False)
        state = seg.new_state(image)
        seg.add_clicks(state, [(48, 44, 20)], [])
        masks.append(seg.add_clicks(state, [(48, 44, 20), (48, 52, 28)], [(48, 30, 28)]).copy())
    assert np.array_equal(*masks)
    with_refiner.refiner.encoder.stem[0].weight.data[:, 5] += 0.5  # as if trained: the saved file must keep it
    with_refiner.save(str(tmp_path / "w.pt"))
    loaded = LimNet.load(str(tmp_path / "w.pt"))
    assert loaded.refiner is not None and loaded.refiner.takes_mask
    assert torch.allclose(loaded.refiner(x, prior), with_refiner.refiner(x, prior).half().float(), atol=2e-2)


def test_a_deepened_module_answers_as_before_and_keeps_its_blocks_through_save_and_load(net, tmp_path) -> None:
    """`InteractionModule.deepen` (`train.py --deepen`): blocks added after the encoder stages start as the identity,
    so the module answers exactly as before; once trained, the weights file brings them back on load."""
    import copy

    from lib.net.bundle import LimNet

    deep = copy.deepcopy(net)
    deep.interaction.deepen((1, 2, 0, 1))
    deep.refiner.deepen((0, 0, 1, 0))
    assert deep.interaction.depth == (1, 2, 0, 1) and net.interaction.depth == (0, 0, 0, 0)
    x = torch.rand(2, 5, 64, 64)
    prior = (torch.rand(2, 1, 64, 64) > 0.5).float()
    assert torch.equal(deep.interaction(x), net.interaction(x))
    assert torch.equal(deep.refiner(x, prior), net.refiner(x, prior))
    deep.interaction.encoder.deeper[1][1].body[-1].weight.data += 0.5  # as if trained
    assert not torch.allclose(deep.interaction(x), net.interaction(x), atol=1e-3)
    deep.save(str(tmp_path / "w.pt"))
    loaded = LimNet.load(str(tmp_path / "w.pt"))
    assert loaded.interaction.depth == (1, 2, 0, 1) and loaded.refiner.depth == (0, 0, 1, 0)
    assert torch.allclose(loaded.interaction(x), deep.interaction(x).half().float(), atol=2e-2)


def test_the_refiner_reads_the_mask_only_of_a_slice_clicked_again(net) -> None:
    """`_shown_mask`: a later round's slice with a new click is answered by the refiner with the last mask; a slice
    whose clicks are all from earlier rounds (answered again in a changed box) by the interaction module alone, as
    is every slice of a first round and every slice of a round with `use_refiner` off."""
    from lib.engine.state import InteractionState

    assert net.refiner is not None and net.refiner.takes_mask  # the committed weights carry one
    image, label = capsule_volume(seed=1)
    state = InteractionState(image=image, mask=label.astype(bool), foreground=[(48, 44, 20)])
    seg = LimNetSegmenter(net, "cpu", use_fusion=False)
    assert seg._shown_mask(InteractionState(image=image), 20, [(48, 44)], []) is None
    assert seg._shown_mask(state, 20, [(48, 44)], []) is None  # no new click there
    shown = seg._shown_mask(state, 20, [(48, 44), (50, 40)], [])
    assert shown is not None and np.array_equal(shown, label[:, :, 20])
    assert seg._shown_mask(state, 28, [], [(48, 30)]) is not None
    assert seg._shown_mask(dataclasses.replace(state, refine=False), 28, [], [(48, 30)]) is None  # the round's option
    assert LimNetSegmenter(net, "cpu", use_fusion=False, refine_only_new=False)._shown_mask(
        state, 20, [(48, 44)], []) is not None


@pytest.mark.parametrize("spacing, axis", [
    ((1.0, 1.0, 5.0), 2), ((0.7, 0.7, 0.7), 2), ((3.9, 3.9, 2.0), 2),  # as stored: square in-plane pixels
    ((5.0, 1.0, 1.0), 0), ((1.0, 4.0, 1.0), 1), ((0.5, 1.0, 1.0), 0),  # the slices with square pixels lie across
    ((1.0, 1.1, 1.2), 2), ((1.0, 2.0, 3.0), 2), (None, 2), ((0.0, 1.0, 1.0), 2),  # nothing clearly squarer / unknown
])
def test_slice_axis_is_the_one_across_square_pixels(spacing, axis):
    from lib.engine.orientation import SliceAxis

    assert SliceAxis.for_spacing(spacing).axis == axis


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_axis_turns_clicks_and_answers_back(axis):
    from lib.engine.orientation import SliceAxis

    slices = SliceAxis(axis)
    stored = np.zeros((7, 9, 11), bool)
    stored[2, 3, 4] = True
    engine = slices.volume(stored)
    assert engine.shape[2] == stored.shape[axis] and slices.stored_shape(engine.shape) == stored.shape
    (click,) = slices.clicks([(2, 3, 4)])
    assert engine[click] and slices.stored_clicks([click]) == [(2, 3, 4)]
    back = slices.mask(np.asfortranarray(engine))
    assert back.shape == stored.shape and back.flags.f_contiguous and np.array_equal(back, stored)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[axis, axis] = 5.0
    assert SliceAxis.for_affine(affine).axis == axis


def test_a_prepared_image_is_held_across_its_thick_axis():
    """The server's image cache holds a volume stored thick axis first in the engine's order (a view of it), and
    reports the stored shape, which clients' clicks are checked against."""
    from monai.data import MetaTensor

    from lib.infers.limnet import prepare_image

    rng = np.random.default_rng(0)
    stored = rng.integers(-1000, 1000, (12, 40, 48)).astype(np.int16)
    image = prepare_image(MetaTensor(torch.from_numpy(stored), affine=torch.diag(torch.tensor([5.0, 0.8, 0.8, 1.0],
                                                                                              dtype=torch.float64))))
    assert image.slices.axis == 0 and image.shape == stored.shape and image.normalized.shape == (40, 48, 12)
    plain = prepare_image(MetaTensor(torch.from_numpy(np.ascontiguousarray(stored.transpose(1, 2, 0))),
                                     affine=torch.diag(torch.tensor([0.8, 0.8, 5.0, 1.0], dtype=torch.float64))))
    assert plain.slices.identity
    np.testing.assert_array_equal(np.asarray(image.normalized), np.asarray(plain.normalized))


def test_a_ct_scanners_padding_reads_as_air(net):
    """A CT padded outside its reconstruction circle (-3024 HU) is normalised as the same CT with air there: the
    padding does not stretch the range (server cache and engine alike); an MR's range and a CT without padding, or
    with air noisier than any padding value, keep theirs."""
    from monai.data import MetaTensor

    from lib.engine.denoise import ct_padding
    from lib.engine.geometry import normalize_intensity
    from lib.infers.limnet import prepare_image

    rng = np.random.default_rng(0)
    ct = rng.normal(40, 20, (64, 64, 8)).astype(np.float32)
    x, y = np.ogrid[:64, :64]
    ring = (x - 31.5) ** 2 + (y - 31.5) ** 2 > 26**2
    ct[ring] = -1024.0
    padded = ct.copy()
    padded[((x - 31.5) ** 2 + (y - 31.5) ** 2 > 31.5**2)] = -3024.0
    plain = normalize_intensity(ct, padding=ct_padding(True))
    np.testing.assert_allclose(normalize_intensity(padded, padding=ct_padding(True)), plain, atol=0.005)
    assert not np.allclose(normalize_intensity(padded), plain, atol=0.05)  # without the floor the range stretches
    noisy = ct.copy()
    noisy[:4] = rng.normal(-1200, 100, noisy[:4].shape)  # air noisier than a CT's, never as low as padding
    np.testing.assert_array_equal(normalize_intensity(noisy, padding=ct_padding(True)), normalize_intensity(noisy))
    mr = np.abs(ct) + 5.0
    np.testing.assert_array_equal(normalize_intensity(mr, padding=ct_padding(False)), normalize_intensity(mr))
    cached = prepare_image(MetaTensor(torch.from_numpy(np.round(padded).astype(np.int16))))
    assert cached.hounsfield
    np.testing.assert_allclose(np.asarray(cached.normalized, np.float32), plain, atol=0.006)
    state = LimNetSegmenter(net, "cpu").new_state(padded)  # the engine's own normalisation (evaluation, trainer)
    np.testing.assert_allclose(np.asarray(state.image, np.float32), plain, atol=0.005)


@pytest.mark.parametrize("turn", list(ORIENTATIONS))
def test_a_first_click_finds_a_bright_box_however_the_volume_is_stored(net, turn):
    """A bright box in a textured CT-like volume (the DICOMweb tests' series), stored in any of the eight in-plane
    mirrors and quarter turns or with its slices reversed (`compare_real.py`'s orientations): one click at its centre
    answers with most of the box and nothing around it. Files come in every orientation. The committed weights take
    0.99 of it in the eight in-plane orientations and 0.92 with the slices reversed, nothing outside it (0.76 turned
    left before `fill_step`). Interaction modules fine-tuned from them (2026-12-08, not adopted) answered it with a
    patch in some orientations: with mirrored crops (`train.py --mirror 0.25`) 0.31-0.68 of the box as stored and
    reversed, without 0.13-0.42 swapped and turned (the search's first box, 1.2 times the box, is read as a patch and
    trusted for filling it; design log); with `fill_step`, 0.99 in every orientation."""
    image, truth = (np.ascontiguousarray(ORIENTATIONS[turn](a)) for a in cube_volume())
    click = tuple(int(v) for v in np.argwhere(truth).mean(0).round())
    seg = LimNetSegmenter(net, "cpu", use_fusion=False)
    mask = seg.add_clicks(seg.new_state(image), [click], [])
    found, inside = (mask & truth).sum() / truth.sum(), (mask & truth).sum() / max(int(mask.sum()), 1)
    assert found > 0.7 and inside > 0.95, (turn, found, inside)


def test_a_patch_trusted_for_filling_its_box_gives_way_to_the_outlined_object_around_it(net):
    """The first click's search trusts a reading that fills its box (`_object_reading`); an interaction module
    fine-tuned from the committed one (as the trainer does on new labels) answered the bright box's first search box
    with a 10-pixel patch of it, trusted so. With `fill_step` the next box's reading, which holds the patch and
    follows the box's edge many times better, replaces it; the box itself, which nothing outlines better, stays."""
    image, truth = cube_volume()
    k, click = 14, (24, 58)
    patch = np.zeros(image.shape[:2], bool)
    patch[19:29, 53:63] = True  # inside the bright box, around the click: no edge on its outline
    found = Reading(patch, (19, 28, 53, 62), 24)
    seg = LimNetSegmenter(net, "cpu", use_fusion=False, fill_step=(10.0, 5.0))
    readable = seg.new_state(image).readable
    nxt = list(seg._growing_boxes(readable, k, [click], 24, 1.5))[1]
    stepped = seg._stepped_up(readable, nxt, k, [click], [], found)
    assert stepped is not found and dice(stepped.mask, truth[:, :, k]) > 0.9
    outlined = Reading(truth[:, :, k].copy(), (14, 33, 50, 67), 24)  # the box itself: nothing outlines it better
    assert seg._stepped_up(readable, nxt, k, [click], [], outlined) is outlined
