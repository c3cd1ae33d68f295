"""Real training and validation volumes from TotalSegmentator's sdist: labels lie on their organs, and the
validation series never enters training."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from lib.data.totalseg import training_cases, validation_cases


def test_validation_labels_lie_on_their_organs():
    cases = {c.name: c for c in validation_cases()}
    assert {"ctval_liver", "ctval_spleen", "ctval_aorta", "ctval_trachea"} <= set(cases)
    hu = {n: float(np.mean(c.image[c.label > 0])) for n, c in cases.items()}
    # soft-tissue organs near +50..+100 HU, air in the trachea; a flipped or shifted label map misses both
    assert 30 < hu["ctval_liver"] < 150 and 30 < hu["ctval_spleen"] < 150, hu
    assert hu["ctval_trachea"] < -500, hu
    assert all(c.image.shape == (512, 512, 20) and c.spacing[2] == 2.0 for c in cases.values())


def test_validation_at_4x_is_the_same_series_block_averaged_in_plane():
    """`--set ctval4`: the validation CT at 128 x 128 (3.9 mm pixels), its organs a sixteenth of the voxels, on
    the same tissue (a mirrored or shifted reduction misses the liver's HU and the trachea's air)."""
    full = {c.name: c for c in validation_cases()}
    small = {c.name: c for c in validation_cases(shrink=4)}
    assert {n + "_4x" for n in ("ctval_liver", "ctval_aorta", "ctval_spinal_cord")} <= set(small)
    for name, c in small.items():
        ref = full[name[: -len("_4x")]]
        assert c.image.shape == (128, 128, 20) and c.spacing == (ref.spacing[0] * 4, ref.spacing[1] * 4, 2.0)
        assert abs(c.label.sum() * 16 / ref.label.sum() - 1) < 0.25, (name, int(c.label.sum()), int(ref.label.sum()))
    assert 30 < float(np.mean(small["ctval_liver_4x"].image[small["ctval_liver_4x"].label > 0])) < 150
    assert float(np.mean(small["ctval_trachea_4x"].image[small["ctval_trachea_4x"].label > 0])) < -500


def test_training_never_reads_the_validation_series():
    val = validation_cases()[0].image
    cases = training_cases(np.random.default_rng(0))
    assert len(cases) > 40
    assert all(c.image.shape[:2] != val.shape[:2] for c in cases)  # the validation series is the only 512 x 512 one
    assert all(0 < int(c.label.sum()) < c.label.size // 2 for c in cases)


def test_brain_validation_nuclei_lie_on_grey_matter_between_the_ventricles():
    from lib.data.brainval import validation_cases as brain_cases

    cases = {c.name: c for c in brain_cases()}
    assert len(cases) == 12
    left, right = cases["brainval_thalamus_left"], cases["brainval_thalamus_right"]
    # RAS array: the left thalamus lies at lower i (x) than the right one, both near the middle of the brain
    xl, xr = (float(np.argwhere(c.label)[:, 0].mean()) for c in (left, right))
    mid = left.image.shape[0] / 2
    assert xl < mid < xr and abs((xl + xr) / 2 - mid) < 10, (xl, xr, mid)
    brain = left.image[left.image > 0.1]
    for name in ("pallidum", "putamen"):  # brighter than the brain's median on T1, as deep grey nuclei with iron are
        inside = cases[f"brainval_{name}_left"].image[cases[f"brainval_{name}_left"].label > 0]
        assert np.median(inside) > np.median(brain), name
    thick = cases["brainval_putamen_left_3mm"]
    assert thick.spacing[2] == 3.0 and abs(int(thick.label.sum()) * 3 - int(cases["brainval_putamen_left"].label.sum())) < 600


def test_brain_validation_at_2_mm_holds_the_same_nuclei_an_eighth_the_voxels():
    from lib.data.brainval import validation_cases as brain_cases

    fine = {c.name: c for c in brain_cases()}
    coarse = {c.name: c for c in brain_cases(shrink=4)}
    assert sorted(coarse) == sorted(f"{n}_2mm" for n in fine if not n.endswith("_3mm"))
    for name, c in coarse.items():
        assert c.spacing == (2.0, 2.0, 2.0) and c.image.shape[0] * 2 <= fine[name[:-4]].image.shape[0] + 1
        ratio = int(fine[name[:-4]].label.sum()) / int(c.label.sum())
        assert 5 < ratio < 12, (name, ratio)  # one largest component, block-shrunk 2x in each direction


def test_large_brain_structures_lie_on_their_tissue_and_span_the_brain():
    """`--set brainlarge`: white matter bright on T1 and spanning most of the brain's width, the ventricles dark,
    the cerebellum below the cerebrum; at 2 mm and on 5 mm slices of the same template (the left ventricle only)."""
    from lib.data.brainval import large_cases

    cases = {c.name: c for c in large_cases()}
    assert sorted(cases) == sorted([f"brainval_{n}_{r}" for r in ("2mm", "5mm") for n in (
        "white_matter", "cerebellum", "brainstem", "lateral_ventricle_left")] + ["brainval_lateral_ventricle_right_2mm"])
    for res in ("2mm", "5mm"):
        wm, vent = cases[f"brainval_white_matter_{res}"], cases[f"brainval_lateral_ventricle_left_{res}"]
        brain = np.median(wm.image[wm.image > 0.1 * wm.image.max()])
        assert np.median(wm.image[wm.label > 0]) > brain > np.median(vent.image[vent.label > 0]), res
        # the white matter of both hemispheres: across most of the brain's left-right extent
        xs = np.flatnonzero(wm.label.any((1, 2)))
        head = np.flatnonzero((wm.image > 0.1 * wm.image.max()).any((1, 2)))
        assert xs[-1] - xs[0] > 0.6 * (head[-1] - head[0]), res
        # the cerebellum lies below (inferior, lower k) the white matter's centre
        cer = cases[f"brainval_cerebellum_{res}"]
        assert np.argwhere(cer.label)[:, 2].mean() < np.argwhere(wm.label)[:, 2].mean(), res
    assert cases["brainval_white_matter_5mm"].spacing == (1.0, 1.0, 5.0)
    ratio = cases["brainval_cerebellum_5mm"].label.sum() * 5 / (cases["brainval_cerebellum_2mm"].label.sum() * 8)
    assert 0.8 < ratio < 1.25, ratio  # the same structure: 1 x 1 x 5 mm voxels against 2 x 2 x 2 mm


def test_brain_validation_in_a_256_field_of_view_is_the_same_brain_padded_with_air():
    from lib.data.brainval import validation_cases as brain_cases

    fine = {c.name: c for c in brain_cases()}
    wide = {c.name: c for c in brain_cases(fov=256)}
    assert sorted(wide) == sorted(f"{n}_fov256" for n in fine)
    for name, c in wide.items():
        f = fine[name[: -len("_fov256")]]
        assert c.image.shape == (256, 256, f.image.shape[2]) and int(c.label.sum()) == int(f.label.sum())
        assert float(c.image.sum()) == pytest.approx(float(f.image.sum()), rel=1e-6)  # only air added
        world = lambda case: case.affine[:3, :3] @ np.argwhere(case.label).mean(0) + case.affine[:3, 3]  # noqa: E731
        assert np.allclose(world(c), world(f), atol=1e-3), name  # the label stays where it was in the scanner


def test_negative_clicks_after_a_whole_body_answer_choose_the_smaller_reading(net):
    """Real CT, a click in a rib and one in the left back muscle: the first click's full-slice pass answers with the
    body around them (hundreds of times the structure), and the robot's negative clicks then only carved pieces off
    it (Dice under 0.12 after 6 clicks). The second round, negative clicks alone outside the small-to-large search's
    trusted answer, re-answers in that answer's box (`reread`). With the first pick of before (`first_pick`
    "smallest"), which the brain's slices keep, and the CT area guard of before (`imaged_guard_ct` 0.45; at 0.3 the
    search's answer is taken at once and the first answer is no longer the body)."""
    from lib.data.robot import run_robot
    from lib.engine.segmenter import LimNetSegmenter

    cases = {c.name: c for c in validation_cases()}
    for name in ("ctval_rib_left_4", "ctval_autochthon_left"):
        case = cases[name]
        runs = {}
        for reread in (None, 4.0):
            seg = LimNetSegmenter(net, "cpu", use_fusion=False, reread=reread, first_pick="smallest",
                                  imaged_guard_ct=0.45)
            state = seg.new_state(case.image)
            masks = []
            runs[reread] = run_robot(lambda fg, bg: masks.append(seg.add_clicks(state, fg, bg)) or masks[-1],
                                     case.label, 3, case.spacing)
            assert masks[0].sum() > 10 * case.label.sum(), name  # the first answer: the body around it
            assert len(runs[reread].background) >= 1
        assert max(runs[None].dice) < 0.15, (name, runs[None].dice)
        assert min(runs[4.0].dice[1:]) > 0.35, (name, runs[4.0].dice)


def test_a_positive_click_beyond_a_too_small_first_reading_chooses_the_larger_one(net):
    """Real CT, a click in the liver: the first click's guard takes the box search's small trusted answer inside it
    (a few hundred voxels for a liver of 367,000), and positive clicks grew it a box at a time (Dice 0.01 after the
    second click). A second positive click on that slice, beyond the first box, inside the full-slice answer the
    guard set aside, re-answers in that answer's box (`larger_reading`). With the first pick of before
    (`first_pick` "smallest")."""
    from lib.data.robot import run_robot
    from lib.engine.segmenter import LimNetSegmenter

    case = {c.name: c for c in validation_cases()}["ctval_liver"]
    runs = {}
    for larger in (False, True):
        seg = LimNetSegmenter(net, "cpu", use_fusion=False, larger_reading=larger, first_pick="smallest")
        state = seg.new_state(case.image)
        runs[larger] = run_robot(lambda fg, bg: seg.add_clicks(state, fg, bg), case.label, 2, case.spacing)
        assert len(runs[larger].foreground) == 2 and runs[larger].dice[0] < 0.05
    assert runs[False].dice[1] < 0.05, runs[False].dice
    assert runs[True].dice[1] > 0.4, runs[True].dice


def test_a_first_click_on_a_ct_slice_takes_its_most_distinct_reading(net):
    """Real CT, clicks in the liver, a rib and the left back muscle: on a 512-pixel slice the whole-slice pass answers
    with the body, and the box search's smallest trusted answer is a patch of the structure (Dice after the first
    click 0.01, 0.00 and 0.11). The answer whose outline follows an edge (`first_pick` "distinct_reduced", the
    default) is the structure. With the CT area guard of then (`imaged_guard_ct` 0.45; at 0.3 the rib's body answer
    goes to the search, whose answer then scores 0.44 with "smallest"; "distinct_reduced" reads the same either way)."""
    from lib.data.robot import run_robot
    from lib.engine.segmenter import LimNetSegmenter

    cases = {c.name: c for c in validation_cases()}
    for name in ("ctval_liver", "ctval_rib_left_4", "ctval_autochthon_left"):
        case = cases[name]
        dice = {}
        for pick in ("smallest", "distinct_reduced"):
            seg = LimNetSegmenter(net, "cpu", use_fusion=False, first_pick=pick, imaged_guard_ct=0.45)
            state = seg.new_state(case.image)
            dice[pick] = run_robot(lambda fg, bg: seg.add_clicks(state, fg, bg), case.label, 1, case.spacing).dice[0]
        assert dice["smallest"] < 0.15 and dice["distinct_reduced"] > 0.5, (name, dice)


def test_heldout_chest_ct_labels_lie_on_lungs_and_spine():
    """The held-out chest CT of slicerio's wheel (10 mm slices): its lungs hold air and its spine bone, the right lung
    lies on the patient's right (RAS: higher x), and an unknown source is refused by name."""
    from lib.data.heldout import heldout_cases

    cases = {c.name: c for c in heldout_cases(sources=("ctchest",))}
    assert sorted(cases) == ["ctchest_lung_left", "ctchest_lung_right", "ctchest_thoracic_spine"]
    hu = {n: float(np.median(c.image[c.label > 0])) for n, c in cases.items()}
    assert hu["ctchest_lung_left"] < -500 and hu["ctchest_lung_right"] < -500 and hu["ctchest_thoracic_spine"] > 150, hu
    world_x = {n: (c.affine[:3, :3] @ np.argwhere(c.label).mean(0) + c.affine[:3, 3])[0] for n, c in cases.items()}
    assert world_x["ctchest_lung_left"] < world_x["ctchest_thoracic_spine"] < world_x["ctchest_lung_right"], world_x
    assert all(c.spacing[2] == pytest.approx(10.0) and c.modality == "CT" for c in cases.values())
    with pytest.raises(ValueError, match="unknown held-out sources"):
        heldout_cases(sources=("ctchest", "nowhere"))


def test_a_first_click_in_a_nucleus_does_not_depend_on_the_air_around_the_brain(net):
    """2 mm brain, a click in the left thalamus: the full-slice pass answers with the whole brain, which the first
    click's guard catches when it spans most of the slice. With 8 voxels of air added around the template (a wider
    field of view, as scanners have) it no longer spanned 3/4 of the slice, and the brain was taken: Dice 0.016.
    The guard also measures the answer against the brain the slice images (`imaged_area`), so the
    answer is the nucleus either way."""
    from lib.data.brainval import validation_cases as brain_cases
    from lib.data.robot import run_robot
    from lib.engine.segmenter import LimNetSegmenter

    case = {c.name: c for c in brain_cases(shrink=4)}["brainval_thalamus_left_2mm"]
    dice = {}
    for pad in (0, 8):
        seg = LimNetSegmenter(net, "cpu", use_fusion=False)
        state = seg.new_state(np.pad(case.image, pad))
        dice[pad] = run_robot(lambda fg, bg: seg.add_clicks(state, fg, bg), np.pad(case.label, pad) > 0, 1,
                              case.spacing).dice[0]
    assert dice[0] > 0.4 and abs(dice[8] - dice[0]) < 0.05, dice


def test_a_click_in_the_white_matter_is_not_taken_for_the_whole_brain(net):
    """The white matter spans most of the brain it lies in, as the whole brain does, but covers a third of its area:
    a click at the deepest white-matter voxel of the MNI152 2009 T1 (skull-stripped, 5 mm slices; the OHIF browser
    test's case) is answered with white matter, not with a small piece of it found by the box search (an earlier
    guard measured by span alone answered 332 of 124,306 voxels there)."""
    from lib.data.packaged import mni152, mni152_structures, thick_slices
    from lib.engine.segmenter import LimNetSegmenter

    t1, _, _, _ = mni152()
    image, wm = thick_slices(t1, mni152_structures()["white_matter"].astype(np.uint8), 5)
    wm = wm > 0
    k = 21
    depth = ndi.distance_transform_edt(wm[:, :, k])
    i, j = (int(v) for v in np.unravel_index(np.argmax(depth), depth.shape))
    seg = LimNetSegmenter(net, "cpu", use_fusion=False)
    mask = seg.add_clicks(seg.new_state(image), [(i, j, k)], [])
    precision = (mask & wm).sum() / mask.sum()
    assert mask.sum() > 0.3 * wm.sum() and precision > 0.85, (int(mask.sum()), int(wm.sum()), precision)


def test_a_click_in_the_aorta_of_a_low_resolution_ct_is_not_answered_with_the_body(net):
    """The validation CT at 128 x 128 (3.9 mm pixels): the whole-slice pass answered a click in the aorta with half
    the body's soft tissue, which spans 2/3 of the slice, so the span guard let it through (Dice 0.02). It covers
    half of what the slice images (`imaged_area`), so the box search checks it and finds the aorta."""
    from lib.data.robot import run_robot
    from lib.engine.segmenter import LimNetSegmenter

    case = {c.name: c for c in validation_cases(shrink=4)}["ctval_aorta_4x"]
    seg = LimNetSegmenter(net, "cpu", use_fusion=False)
    state = seg.new_state(case.image)
    run = run_robot(lambda fg, bg: seg.add_clicks(state, fg, bg), case.label > 0, 1, case.spacing)
    assert run.dice[0] > 0.7, run.dice


def test_a_click_in_a_back_muscle_of_a_noisy_low_resolution_ct_is_not_answered_with_the_body(net):
    """The validation CT at 128 x 128 with Gaussian noise of 1% of its intensity range: the whole-slice pass answers
    a click in the left back muscle with the body's soft tissue around it, which covers 0.39 of what the slice
    images (0.47 without the noise), so the area guard of 0.45 let it through (Dice 0.06 after the first click; 0.74
    on the image without noise). A CT's bar is 0.3 (`imaged_guard_ct`): the box search checks it and finds the
    muscle."""
    from lib.data.robot import run_robot
    from lib.engine.segmenter import LimNetSegmenter

    case = {c.name: c for c in validation_cases(shrink=4)}["ctval_autochthon_left_4x"]
    lo, hi = np.percentile(case.image, [1, 99])
    image = (case.image + np.random.default_rng(0).normal(0, 0.01 * (hi - lo), case.image.shape)).astype(np.float32)
    dice = {}
    for guard in (0.45, 0.3):
        seg = LimNetSegmenter(net, "cpu", use_fusion=False, imaged_guard_ct=guard)
        state = seg.new_state(image)
        dice[guard] = run_robot(lambda fg, bg: seg.add_clicks(state, fg, bg), case.label > 0, 1, case.spacing).dice[0]
    assert dice[0.45] < 0.2 and dice[0.3] > 0.6, dice


def test_positive_clicks_grow_a_large_organ_found_in_part(net):
    """Real CT at 128 x 128 (`--set ctval4`), clicks in the liver: the first click's search trusts a patch of it,
    and each positive click's added part was read in the round's box, about 1.4 times the mask so far, where the
    module answers a uniform organ with a patch a little larger than that: Dice 0.05 -> 0.32 over 5 clicks. The added
    part is now read in wider views too, and a wider one that stands out 1.5 times more is taken (`wider_adds`)."""
    from lib.data.robot import run_robot
    from lib.engine.segmenter import LimNetSegmenter

    case = {c.name: c for c in validation_cases(shrink=4)}["ctval_liver_4x"]
    runs = {}
    for wider in (0, 3):
        seg = LimNetSegmenter(net, "cpu", use_fusion=False, wider_adds=wider)
        state = seg.new_state(case.image)
        runs[wider] = run_robot(lambda fg, bg: seg.add_clicks(state, fg, bg), case.label, 5, case.spacing)
        assert len(runs[wider].background) == 0 and runs[wider].dice[0] < 0.1
    assert runs[0].dice[-1] < 0.4 and runs[3].dice[-1] > 0.45, (runs[0].dice, runs[3].dice)


def test_a_click_on_a_missed_rim_of_a_nucleus_does_not_take_the_structure_around_it(net):
    """1 mm brain, clicks on the left pallidum: its 4th click, on a missed rim, read in a view 1.5 times wider,
    answers with the pallidum and the putamen around it, which stands out a little more (distinctness 1.95 ->
    2.29): taken, Dice 0.72 -> 0.25. A wider view must stand out 1.5 times more (`wider_gain`). Found with the first
    memory model, and checked with it; with the MR memory model that serves this volume since 2026-12-07 the 4th
    click does not take the putamen either way (0.78 at `wider_gain` 1, 0.69 at 1.5, with the evening's MR model)."""
    from lib.data.brainval import validation_cases as brain_cases
    from lib.data.robot import run_robot
    from lib.engine.segmenter import LimNetSegmenter

    case = {c.name: c for c in brain_cases()}["brainval_pallidum_left"]
    for mr_memory in (False, True):
        runs = {}
        for gain in (1.0, 1.5):
            seg = LimNetSegmenter(net, "cpu", use_fusion=False, wider_adds=3, wider_gain=gain, mr_memory=mr_memory)
            state = seg.new_state(case.image)
            runs[gain] = run_robot(lambda fg, bg: seg.add_clicks(state, fg, bg), case.label, 4, case.spacing)
            assert len(runs[gain].background) == 0
        assert runs[1.5].dice[-1] > 0.6, (mr_memory, runs[1.5].dice)
        if not mr_memory:
            assert runs[1.0].dice[-1] < 0.4, runs[1.0].dice


@pytest.mark.parametrize("name", ["ctval_rib_left_4_4x", "brainval_caudate_right"])
def test_a_whole_slice_answer_around_the_object_yields_to_the_ranked_reading(net, name):
    """A click in a rib of the 128 x 128 CT, and in the right caudate of the 1 mm brain: the whole-slice pass answers
    with a region many times the structure around it, yet plausible in size, so the guard lets it through (Dice 0.06
    and 0.01 after the first click). The reading ranker at `ranked_first` 0.8 (off by default: it also takes a piece
    of a large structure, design log 2026-12-07) prefers a reading in a smaller box, the structure (0.81 and 0.59)."""
    from lib.data.brainval import validation_cases as brain_cases
    from lib.data.robot import run_robot
    from lib.engine.segmenter import LimNetSegmenter

    cases = validation_cases(shrink=4) if name.startswith("ctval") else brain_cases(shrink=2)
    case = {c.name: c for c in cases}[name]
    dice = {}
    for ranked in (0.8, None):
        seg = LimNetSegmenter(net, "cpu", use_fusion=False, ranked_first=ranked)
        state = seg.new_state(case.image)
        dice[ranked] = run_robot(lambda fg, bg: seg.add_clicks(state, fg, bg), case.label > 0, 1, case.spacing).dice[0]
    assert net.ranker is not None and dice[None] < 0.1 and dice[0.8] > 0.5, dice


def test_mni152_tissue_targets_can_be_left_out_and_the_seeded_regions_stay_the_same():
    """The memory_mr stage's pool leaves out the whole-brain target (`train.py --mr-tissues`, which made the MR memory
    model carry a leak through the brain); the draws are the same with or without it, so only those cases leave."""
    from lib.data.real_targets import mni_training_cases

    every = mni_training_cases(np.random.default_rng(5), n_regions=3)
    some = mni_training_cases(np.random.default_rng(5), n_regions=3, tissues=("ventricles",))
    assert len(every) - len(some) == 4  # two tissues, each at 1 mm and on thick slices
    assert np.array_equal(every[4].label, some[0].label) and every[4].label.sum() < 0.05 * every[4].label.size
    assert len(every) > 6
    for a, b in zip(every[6:], some[2:]):
        assert np.array_equal(a.label, b.label) and np.array_equal(a.image, b.image)
    with pytest.raises(ValueError, match="unknown MNI152 tissues"):
        mni_training_cases(np.random.default_rng(5), n_regions=0, tissues=("white_mater",))
