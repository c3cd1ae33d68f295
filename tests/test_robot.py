"""The robot user clicks the deepest voxel of the largest error component, positive where truth is foreground."""

import numpy as np
import pytest

from lib.data.robot import dice, next_click, next_click_on_slice, run_robot
from lib.engine.state import InteractionState, InteractionStore


def test_first_click_is_the_object_centre():
    gt = np.zeros((20, 20, 20), bool)
    gt[5:16, 4:15, 6:17] = True
    idx, positive = next_click(np.zeros_like(gt), gt)
    assert positive and idx == (10, 9, 11)


def test_click_goes_to_the_largest_error_and_is_negative_on_false_positives():
    gt = np.zeros((30, 30, 10), bool)
    gt[2:6, 2:6, 2:6] = True
    pred = gt.copy()
    pred[15:27, 15:27, 2:8] = True  # a large false positive
    idx, positive = next_click(pred, gt)
    assert not positive and 15 <= idx[0] < 27 and 15 <= idx[1] < 27
    assert next_click(gt, gt) is None
    assert dice(pred, gt) < 1 and dice(gt, gt) == 1


def test_the_slice_user_corrects_the_first_slice_then_clicks_as_the_robot():
    """`user="slice"`: after the first click, clicks go to the largest 2D error on its slice (here a false patch
    beside the object there, although a larger error lies elsewhere) until that slice's Dice reaches 0.9; then the
    robot's 3D click. The challenge's robot would click the larger error first."""
    gt = np.zeros((40, 40, 12), bool)
    gt[10:21, 10:21, 1:12] = True
    patch = np.zeros_like(gt)
    patch[23:31, 10:21, 6] = True  # a false patch beside the object on the first click's slice
    far = np.zeros_like(gt)
    far[26:40, 26:40, 0:5] = True  # a larger false object on other slices
    answers = [gt | patch | far, gt | far, gt]
    for user in ("slice", "volume"):
        calls = []

        def segment(fg, bg):
            calls.append((list(fg), list(bg)))
            return answers[min(len(calls) - 1, 2)]

        run = run_robot(segment, gt, 3, user=user)
        assert run.foreground == [(15, 15, 6)]  # the object's centre
        x, y, k = run.background[0]
        assert (23 <= x < 31 and 10 <= y < 21 and k == 6) is (user == "slice")  # the patch, for the slice user
        assert 26 <= run.background[-1][0] < 40 and 26 <= run.background[-1][1] < 40  # then the far object
    assert next_click_on_slice(gt, gt, 6) is None and next_click_on_slice(gt | patch, gt, 6)[1] is False


def test_rounds_are_recognised_by_extended_clicks():
    s = InteractionState(image=np.zeros((2, 2, 2), np.float32), foreground=[(1, 1, 1)], background=[])
    assert s.extends([(1, 1, 1), (0, 0, 0)], [])
    assert s.extends([(1, 1, 1)], [(0, 1, 0)])
    assert not s.extends([(1, 1, 1)], [])
    assert not s.extends([(0, 0, 0), (1, 1, 1)], [])


def _round(state: InteractionState, fg: list, bg: list, seed: int) -> np.ndarray:
    """What `add_clicks` leaves behind: a new Fortran-ordered mask, its region, the clicks, the round recorded."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(state.image.shape, bool, order="F")
    region = (slice(2, 13), slice(1, 8), slice(3 + seed % 3, 10))  # odd sizes: the packed bits end mid-byte
    mask[region] = rng.random(mask[region].shape) > 0.5
    state.mask, state.region, state.foreground, state.background = mask, region, list(fg), list(bg)
    state.rounds += 1
    state.settings = (False, 0, True)
    state.record_round()
    return mask


def test_clicks_taken_back_return_the_round_the_user_saw():
    """Undo: a round's mask comes back bit for bit when its clicks come back (a point deleted in the viewer), later
    rounds are forgotten, and clicking anew goes on from there; lists that start with no kept round do not rewind."""
    s = InteractionState(image=np.zeros((15, 9, 12), np.float32))
    a, b, c = (3, 3, 5), (4, 4, 6), (9, 2, 7)
    m1 = _round(s, [a], [], 1)
    m2 = _round(s, [a], [b], 2)
    _round(s, [a, c], [b], 3)
    assert s.new_clicks([a], []) is None and s.rewind([a], [(1, 1, 1)])  # b deleted, a new negative click
    assert s.rounds == 1 and s.foreground == [a] and s.background == [] and len(s.history) == 1
    assert np.array_equal(s.mask, m1) and s.mask.flags.f_contiguous and s.probs is None
    assert s.new_clicks([a], [(1, 1, 1)]) == [(1, 1, 1)]
    _round(s, [a], [b], 2)
    assert s.rewind([a], [b]) and s.rounds == 2 and np.array_equal(s.mask, m2)  # the current round: nothing to do
    assert not s.rewind([c], [])  # no kept round starts these lists
    assert s.rounds == 2 and np.array_equal(s.mask, m2)


def test_kept_rounds_are_bounded_by_count_and_bytes():
    s = InteractionState(image=np.zeros((15, 9, 12), np.float32))
    for i in range(20):
        _round(s, [(1, 1, i % 12)] * (i + 1), [], i)
    assert len(s.history) == 16 and s.history[0].rounds == 5
    s.record_round(max_bytes=1)  # over the byte budget only the newest stays
    assert len(s.history) == 1 and s.history[0].rounds == 20


def test_store_is_bounded_and_expires():
    store = InteractionStore(max_items=2, ttl_seconds=3600)
    for i in range(3):
        store.put(("img", i), InteractionState(image=np.zeros((1, 1, 1), np.float32)))
    assert len(store) == 2 and store.get(("img", 0)) is None
    store.ttl = 0
    assert store.get(("img", 2)) is None


def test_classical_tools_segment_a_plain_sphere():
    """The baselines are real tools, not strawmen: one click on a bright noisy sphere gets it; a negative click
    inside it takes the flood away again."""
    from lib.data.baseline import FloodFillTool, RandomWalkerTool

    rng = np.random.default_rng(0)
    x, y, z = np.ogrid[:40, :40, :30]
    sphere = (x - 20) ** 2 + (y - 20) ** 2 + (z - 15) ** 2 < 64
    image = (sphere * 1.0 + rng.normal(0, 0.05, sphere.shape)).astype(np.float32)
    flood = FloodFillTool(image)
    for tool in (flood, RandomWalkerTool(image)):
        assert dice(tool([(20, 20, 15)], []), sphere) > 0.9
    assert not flood([(20, 20, 15)], [(21, 20, 15)]).any()


def test_noise_for_the_probes_has_the_asked_spread_and_blur():
    """`with_noise` (scripts/evaluate.py --noise): the spread is the asked share of the image's 1-99 percentile
    range; blurred noise is correlated between neighbouring pixels in-plane, not across slices; the same seed gives
    the same draw."""
    from lib.data.evaluation import with_noise

    image = np.zeros((64, 64, 8), np.float32)
    image[:, 32:] = 200.0
    assert with_noise(image, 0.0, 1) is image
    white, blurred = with_noise(image, 2.0, 1) - image, with_noise(image, 2.0, 1, blur=0.8) - image
    for noise in (white, blurred):
        assert abs(noise.std() - 4.0) < 0.2, noise.std()  # 2% of the range, 200
    inplane = [np.corrcoef(n[1:].ravel(), n[:-1].ravel())[0, 1] for n in (white, blurred)]
    across = np.corrcoef(blurred[:, :, 1:].ravel(), blurred[:, :, :-1].ravel())[0, 1]
    assert abs(inplane[0]) < 0.05 and inplane[1] > 0.5 and abs(across) < 0.05, (inplane, across)
    assert np.array_equal(with_noise(image, 2.0, 1), with_noise(image, 2.0, 1))


def test_evaluate_json_records_the_run_and_reads_back(tmp_path):
    """`scripts/evaluate.py --json`: every case carries the run's settings (a noisy probe is told from a clean run),
    and `--summary-from` / `--plot-from` read the file back. One 128 x 128 validation organ, one click."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run.json"
    cmd = [sys.executable, str(root / "scripts" / "evaluate.py"), "--set", "ctval4", "--cases", "ctval_aorta_4x",
           "--rounds", "1", "--no-baseline", "--noise", "1", "--noise-blur", "0.8", "--noise-seed", "3",
           "--json", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=root, timeout=600)
    (case,) = json.loads(out.read_text())
    assert case["case"] == "ctval_aorta_4x" and len(case["dice"]["limnet_no_mrf"]) == 1
    run = case["run"]
    assert (run["set"], run["rounds"], run["noise"], run["noise_blur"], run["noise_seed"]) == ("ctval4", 1, 1.0, 0.8, 3)
    assert run["weights"].endswith(".pt")
    printed = subprocess.run([sys.executable, str(root / "scripts" / "evaluate.py"), "--summary-from", str(out)],
                             check=True, capture_output=True, text=True, cwd=root, timeout=120).stdout
    assert "| ctval_aorta_4x | " in printed and "- mean Dice after 1 clicks: " in printed, printed


def test_compare_real_pairs_settings_draw_by_draw(tmp_path):
    """`scripts/compare_real.py`: the paired difference is taken structure by structure and draw by draw; a setting
    identical to the reference differs by exactly 0 on every draw (same images, same clicks), and one that changes the
    inference is seen. One 128 x 128 validation organ, 3 clicks, two noise draws."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "scripts"))
    from compare_real import paired

    ref = {0: {"a": [0.5, 0.5], "b": [0.2, 0.4]}, 1: {"a": [0.4, 0.6], "b": [0.3, 0.3]}}
    other = {0: {"a": [0.6, 0.6], "b": [0.3, 0.5]}, 1: {"a": [0.5, 0.5], "b": [0.3, 0.3]}}
    p = paired(ref, other)
    assert p["per_draw"] == pytest.approx([0.1, 0.0]) and p["mean"] == pytest.approx(0.05)
    assert p["structures"] == 2 and p["draws"] == [0, 1] and p["low"] <= p["mean"] <= p["high"]

    out = tmp_path / "cmp.json"
    cmd = [sys.executable, str(root / "scripts" / "compare_real.py"), "--variant", "base={}", "--variant", "same={}",
           "--variant", 'narrow={"wider_adds": 0}', "--sets", "ctval4", "--users", "volume", "--rounds", "3",
           "--noise-seeds", "0,50", "--cases", "ctval_liver_4x", "--json", str(out)]
    printed = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=root, timeout=600).stdout
    runs = json.loads(out.read_text())["runs"]
    assert sorted((r["variant"], r["seed"]) for r in runs) == [(v, s) for v in ("base", "narrow", "same")
                                                                  for s in (0, 50)]
    dice = {(r["variant"], r["seed"]): r["dice"]["ctval_liver_4x"] for r in runs}
    assert all(dice["same", s] == dice["base", s] for s in (0, 50))
    assert any(dice["narrow", s] != dice["base", s] for s in (0, 50))
    assert dice["base", 0] != dice["base", 50]  # the draws are other images
    assert "| ctval4 | volume | same | " in printed and "+0.0000 [+0.0000, +0.0000] | +0.0000 +0.0000 |" in printed
    bad = subprocess.run([sys.executable, str(root / "scripts" / "compare_real.py"), "--variant", "base"],
                         capture_output=True, text=True, cwd=root, timeout=120)
    assert bad.returncode == 2 and "NAME=JSON" in bad.stderr


def test_compare_real_reads_a_set_in_other_in_plane_orientations():
    """`compare_real.py --orientations`: image and label are mirrored alike, the slice axis stays (reversed only by
    `flip_z`), and a swap of the in-plane axes swaps their spacing."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from compare_real import ORIENTATIONS, oriented

    image = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    label = image == 5  # voxel (0, 2, 1)
    where = {"stored": (0, 2, 1), "flip_x": (3, 2, 1), "flip_y": (0, 0, 1), "flip_xy": (3, 0, 1), "swap_xy": (2, 0, 1),
             "turn_left": (0, 0, 1), "turn_right": (2, 3, 1), "swap_flip_xy": (0, 3, 1), "flip_z": (0, 2, 0)}
    assert sorted(where) == sorted(ORIENTATIONS)
    for name in ORIENTATIONS:
        im, lab, spacing = oriented(image, label, (0.5, 0.8, 3.0), name)
        assert im.flags.c_contiguous and lab.shape == im.shape
        assert tuple(int(v) for v in np.argwhere(lab)[0]) == where[name] and im[where[name]] == 5
        assert spacing == ((0.8, 0.5, 3.0) if name in ("swap_xy", "turn_left", "turn_right", "swap_flip_xy")
                           else (0.5, 0.8, 3.0))


def test_probe_interaction_pairs_weights_on_the_same_crops(tmp_path):
    """`scripts/probe_interaction.py`: every weights file sees the same slices and clicks, so a file identical to the
    first differs by exactly 0; another module is seen; Dice stays in [0, 1] and rises as the robot corrects."""
    import sys
    from pathlib import Path

    import torch

    from lib.net.bundle import LimNet

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "scripts"))
    from probe_interaction import main

    committed = str(root / "apps" / "limnet" / "model" / "pretrained_limnet.pt")
    other = LimNet.load(committed)
    with torch.no_grad():
        other.interaction.decoder.head.bias += 2.0  # answers larger everywhere
    other.save(str(tmp_path / "other.pt"))
    res = main(["--weights", committed, committed, str(tmp_path / "other.pt"), "--sets", "ctval4", "--slices", "2",
                "--rounds", "3", "--threads", "1"])
    same, changed = res["ctval4"][1] - res["ctval4"][0], res["ctval4"][2] - res["ctval4"][0]
    assert res["ctval4"][0].shape == (3, same.shape[1]) and same.shape[1] >= 20
    assert np.all(same == 0) and np.abs(changed).max() > 0.05
    assert res["ctval4"][0].min() >= 0 and res["ctval4"][0].max() <= 1
    assert res["ctval4"][0][2].mean() > res["ctval4"][0][0].mean()
