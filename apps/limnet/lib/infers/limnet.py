"""The `limnet` infer task: a MONAI Label request with clicks -> one LIM-Net round -> a label volume.

Knows requests, files and interaction keys; the tensors live in `lib.engine`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from fastapi import HTTPException
from monai.data import MetaTensor
from monai.transforms import LoadImaged
from monailabel.interfaces.exception import MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from lib.engine.denoise import noise_level
from lib.engine.geometry import ScaledVolume, normalize_as_read
from lib.engine.orientation import SliceAxis
from lib.engine.segmenter import LimNetSegmenter
from lib.engine.state import InteractionStore
from lib.net.bundle import LimNet
from lib.validation import check_image_complete, check_image_header, check_volume

from .nifti_reader import read_nifti
from .result_writer import GZIP_BY_DEFAULT, write_label_nrrd

logger = logging.getLogger(__name__)

RESULT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")
RESULT_DTYPES = ("uint8", "uint16", "int16", "int32", "float32")
MAX_LABEL_NAME = 128
MAX_CLICKS = 1000


def is_on(value: Any) -> bool:
    """An option's value as a client or `--conf` sends it (a JSON bool, or a string such as "true", "1", "yes")."""
    return str(value).lower() in ("1", "true", "yes")


def _bad_request(msg: str) -> HTTPException:
    return HTTPException(status_code=422, detail=msg)


def parse_clicks(value: Any, name: str, shape: Sequence[int]) -> list[tuple[int, int, int]]:
    """Validate a `foreground`/`background` field: a list of [i, j, k] integer voxel indices inside `shape`."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise _bad_request(f"'{name}' must be a list of [i, j, k] voxel indices, got {type(value).__name__}")
    if len(value) > MAX_CLICKS:
        raise _bad_request(f"'{name}' has {len(value)} clicks; at most {MAX_CLICKS} are accepted")
    out = []
    for p in value:
        if not isinstance(p, (list, tuple)) or len(p) != len(shape):
            raise _bad_request(f"each click in '{name}' must be [i, j, k] ({len(shape)} indices), got {p!r}")
        idx = []
        for v in p:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or float(v) != int(v):
                raise _bad_request(f"click {p!r} in '{name}' must hold integer voxel indices")
            idx.append(int(v))
        if any(i < 0 or i >= s for i, s in zip(idx, shape)):
            raise _bad_request(f"click {p!r} in '{name}' lies outside the image of shape {list(shape)}")
        out.append(tuple(idx))
    return out


@dataclass
class CachedImage:
    """An image as the network reads it: normalised float16 (half of float32, shared by every interaction on it), as
    the voxels read, scaled to the same values where the engine reads them (`ScaledVolume`; a float image is scaled
    whole after its first click, `settle`). Held in the engine's order, slices along its last axis (`slices`)."""

    normalized: np.ndarray | ScaledVolume  # H x W x D in [0, 1], engine order; scaled where read (float images until
    # settled)
    affine: torch.Tensor
    hounsfield: bool = False  # read as a CT (`looks_like_ct`): the noise filter's floor and the area guard are a CT's
    noise: tuple[float, float] | None = None  # `noise_level` of `normalized`, measured at its first interaction
    slices: SliceAxis = SliceAxis()  # the stored axis `normalized` holds last (clicks and answers are turned by it)

    @property
    def shape(self) -> tuple[int, ...]:
        """The image's shape as stored (clients' clicks and answers are in this order)."""
        return self.slices.stored_shape(self.normalized.shape)

    @property
    def dtype(self) -> np.dtype:  # MONAI Label logs shape and dtype of every item between transforms
        return self.normalized.dtype

    @property
    def unsettled(self) -> bool:
        """Whether it still holds a float image's voxels as read (`settle` scales them to float16)."""
        return isinstance(self.normalized, ScaledVolume) and not self.normalized.settled


def prepare_image(image: MetaTensor) -> CachedImage:
    """Check that an image can be segmented (3D, finite values, not constant) and normalise it once."""
    if image.ndim != 3:
        raise _bad_request(f"LIM-Net needs a 3D image; this one has shape {list(image.shape)}")
    # MetaTensor.array copies into C order; the tensor's own view keeps a NIfTI's Fortran order (see
    # `normalize_intensity`)
    volume = image.as_tensor().numpy() if isinstance(image, MetaTensor) else np.asarray(image)
    if volume.dtype.kind not in "uif":
        raise _bad_request(f"unsupported voxel type {volume.dtype}")
    lo, hi = volume.min(), volume.max()  # NaN or an infinity shows in one of them: only then look voxel by voxel
    all_finite = volume.dtype.kind != "f" or bool(np.isfinite(lo) and np.isfinite(hi))
    if not all_finite:
        finite = np.isfinite(volume)
        if not finite.any():
            raise _bad_request("the image holds no finite values")
        lo, hi = volume[finite].min(), volume[finite].max()
    if lo == hi:
        raise _bad_request("the image is constant: there is nothing to segment")
    affine = image.affine if isinstance(image, MetaTensor) else torch.eye(4, dtype=torch.float64)
    slices = SliceAxis.for_affine(np.asarray(affine))
    volume = slices.volume(volume)  # a view: a volume stored with its thick axis first or second is read across it
    normalized, hounsfield = normalize_as_read(volume, dtype=np.float16, known_finite=all_finite, lazy=True)
    return CachedImage(normalized, affine, hounsfield, slices=slices)


def prepare_volume(raw: MetaTensor) -> CachedImage:
    """A volume as read (one value per voxel, 3D: `check_volume`) -> what the image cache holds."""
    check_volume(raw)
    return prepare_image(raw)


class VolumeCache:
    """The last few prepared images by path, invalidated when the file changes: later rounds (and a click after
    the client fetched the image, see `prefetch`) skip reading and normalising."""

    def __init__(self, max_items: int = 4) -> None:
        self.max_items = max_items
        self._items: OrderedDict[str, tuple[tuple, CachedImage]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._loader = LoadImaged(keys="image", reader="ITKReader", image_only=True)

    def load(self, path: str) -> CachedImage:
        st = os.stat(path)
        sig = (st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._items.get(path)
            if hit and hit[0] == sig:
                self._items.move_to_end(path)
                return hit[1]
            gate = self._loading.setdefault(path, threading.Lock())
        with gate:  # a click during a prefetch of the same file waits for it instead of reading twice
            with self._lock:
                hit = self._items.get(path)
                if hit and hit[0] == sig:
                    return hit[1]
            check_image_header(path)  # what ITK does not check: oversized volumes, truncated NIfTI
            try:
                raw = read_nifti(path)
                if raw is None:
                    raw = self._loader({"image": path})["image"]
            except MONAILabelException:
                raise
            except Exception as e:  # corrupt, truncated or unsupported file
                logger.warning("could not read %s: %s", path, e)
                raise _bad_request("could not read the image: the file is corrupt, truncated or not a NIfTI/NRRD "
                                   f"volume ({type(e).__name__})") from e
            check_image_complete(path, raw)
            image = prepare_volume(raw)
            del raw
            self._keep(path, sig, image)
            with self._lock:
                self._loading.pop(path, None)
        return image

    def _keep(self, path: str, sig: tuple, image: CachedImage) -> None:
        with self._lock:
            self._items[path] = (sig, image)
            self._items.move_to_end(path)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def adopt(self, path: str, image: CachedImage) -> None:
        """`image` is what `load(path)` would give (prepared while the file was written, see
        `lib.dicomweb.SeriesConverter`): keep it for the file as it is now."""
        st = os.stat(path)
        self._keep(path, (st.st_mtime_ns, st.st_size), image)
        logger.info("image cache: %s handed over", path)

    def prefetch(self, path: str) -> None:
        """Load `path` in the background (errors are left for the click that needs the image to report)."""

        def run() -> None:
            try:
                start = time.perf_counter()
                image = self.load(path)
                logger.info("prefetched %s in %.2fs", path, time.perf_counter() - start)
                _settle_politely(image, path)
            except Exception as e:
                logger.info("prefetch of %s skipped: %s", path, e)

        threading.Thread(target=run, name="limnet-prefetch", daemon=True).start()


def settle(image: CachedImage, path: str = "") -> None:
    """Scale a float image whole now (`ScaledVolume.settle`): half the memory from here on. Run after the click that
    read it, or in the background, so that the first click does not wait for it."""
    if image.unsettled:
        start = time.perf_counter()
        image.normalized.settle()
        logger.info("image %s (%s) scaled to float16 in %.2fs", path, "x".join(map(str, image.shape)),
                    time.perf_counter() - start)


def settle_later(image: CachedImage, path: str = "") -> None:
    """`settle` in a background thread at the lowest CPU priority, where there is anything to do: it must not slow
    the clicks that come meanwhile (a cold first click on another image took 0.1-0.4 s longer beside it)."""
    if image.unsettled:
        threading.Thread(target=_settle_politely, args=(image, path), name="limnet-settle", daemon=True).start()


def _settle_politely(image: CachedImage, path: str = "") -> None:
    if sys.platform.startswith("linux"):  # Linux schedules threads one by one: this one goes to the back of the queue
        try:  # (elsewhere a thread's id is no process id, and the call could reach another process)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:  # pragma: no cover - a container that forbids it: settle at the usual priority
            pass
    settle(image, path)


FOLLOW_TIMES = 4  # continuations per direction when a request asks to follow the object (validation's setting)


class LimNetInfer(BasicInferTask):
    """Interactive 3D segmentation with LIM-Net (deepgrow-type: foreground/background clicks)."""

    def __init__(self, path: str | Sequence[str], labels: Sequence[str], description: str = "",
                 use_fusion: bool = False, max_interactions: int = 8, ttl_seconds: float = 1800.0,
                 config: dict | None = None, follow_object: bool = False, stop_at_blur: bool = True,
                 use_refiner: bool = True, **kwargs) -> None:
        super().__init__(
            path=path,
            network=None,
            type=InferType.DEEPGROW,
            labels=list(labels),
            dimension=3,
            description=description or "LIM-Net: clicks on a slice, propagated through the volume (MRF rounds)",
            config={"result_extension": ".nrrd", "result_dtype": "uint8", "use_fusion": use_fusion,
                    "follow_object": follow_object, "stop_at_blur": stop_at_blur, "use_refiner": use_refiner,
                    **(config or {})},
            **kwargs,
        )
        self.use_fusion, self.follow_object, self.stop_at_blur = use_fusion, follow_object, stop_at_blur
        self.use_refiner = use_refiner
        self.store = InteractionStore(max_interactions, ttl_seconds)
        self.volumes = VolumeCache()
        self._segmenters: dict[str, tuple[int, LimNetSegmenter]] = {}
        self._lock = threading.RLock()

    # -- model ---------------------------------------------------------------------------------------------
    def segmenter(self, device: str) -> LimNetSegmenter:
        """The network for `device`, reloaded (and open interactions dropped) when the weights file changes."""
        path = self.get_path()
        if not path:
            raise HTTPException(status_code=503, detail="no LIM-Net weights found in the model folder")
        mtime = os.stat(path).st_mtime_ns
        with self._lock:
            cached = self._segmenters.get(device)
            if cached is None or cached[0] != mtime:
                logger.info("loading LIM-Net weights %s on %s", path, device)
                self._segmenters[device] = (mtime, LimNetSegmenter(LimNet.load(path, device), device))
                if cached is not None:
                    self.store.clear()  # features of the old model must not mix with the new one
            return self._segmenters[device][1]

    def is_valid(self) -> bool:
        return self.get_path() is not None

    # -- the BasicInferTask stages -------------------------------------------------------------------------
    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return [self._load]

    def inverse_transforms(self, data=None):
        return None

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return []

    def _load(self, data: dict) -> dict:
        self._validate_options(data)
        path = data.get("image")
        if not isinstance(path, str) or not os.path.isfile(path):
            raise HTTPException(status_code=404, detail="image not found")
        data["image"] = self.volumes.load(path)
        return data

    @staticmethod
    def _validate_options(data: dict) -> None:
        ext = data.get("result_extension") or ".nrrd"
        if ext not in RESULT_EXTENSIONS:
            raise _bad_request(f"result_extension must be one of {list(RESULT_EXTENSIONS)}")
        dtype = data.get("result_dtype") or "uint8"
        if dtype not in RESULT_DTYPES:
            raise _bad_request(f"result_dtype must be one of {list(RESULT_DTYPES)}")
        label = data.get("label")
        if label is not None and (not isinstance(label, str) or len(label) > MAX_LABEL_NAME
                                  or not re.fullmatch(r"[^\x00-\x1f/\\]+", label)):
            raise _bad_request(f"label must be a name of at most {MAX_LABEL_NAME} characters, without / or \\")

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict:
        image: CachedImage = data["image"]
        shape = image.shape
        fg = parse_clicks(data.get("foreground"), "foreground", shape)
        bg = parse_clicks(data.get("background"), "background", shape)
        if not fg and not bg:
            raise _bad_request("send at least one click in 'foreground' or 'background'")
        fg, bg = image.slices.clicks(fg), image.slices.clicks(bg)  # the state keeps them in the engine's order
        device = str(device) if torch.device(device).type != "cuda" or torch.cuda.is_available() else "cpu"
        segmenter = self.segmenter(device)
        label = data.get("label") or self.labels[0]
        path = data["image_path"] if isinstance(data.get("image_path"), str) else ""
        st = os.stat(path) if path and os.path.exists(path) else None
        key = (path, st.st_mtime_ns if st else 0, label, str(data.get("client_id") or ""))
        reset = is_on(data.get("reset_state", False))
        use_fusion = is_on(data.get("use_fusion", self.use_fusion))
        # a first click's propagation follows a long, thin object out of its box (`LimNetSegmenter._follow`)
        follow = is_on(data.get("follow_object", self.follow_object))
        # a sweep past the last clicked slice ends where its slices blur (`PropagationConfig.uncertain_stop`)
        stop = is_on(data.get("stop_at_blur", self.stop_at_blur))
        # a later click on a slice is answered reading the mask the user sees there (`LimNetSegmenter._shown_mask`)
        refine = is_on(data.get("use_refiner", self.use_refiner))
        with self._lock:  # one round at a time per task: rounds share the network's buffers (and states)
            state = None if reset else self.store.get(key)
            # clicks taken back (a point deleted in the viewer, then perhaps a new one): back to the round the user saw
            # with the remaining clicks, not a recomputation of them all at once (`InteractionState.rewind`)
            if state is not None and state.new_clicks(fg, bg) is None and not state.rewind(fg, bg):
                state = None
            settings = (use_fusion, FOLLOW_TIMES if follow else 0, stop, refine)
            repeat = state is not None and state.mask is not None and state.new_clicks(fg, bg) == []
            if repeat and state.settings != settings:  # the same clicks with other options: computed afresh
                state, repeat = None, False
            if state is None:
                if image.noise is None and segmenter.denoise is not None:
                    image.noise = noise_level(image.normalized)  # once per image, not per interaction
                state = segmenter.new_state(image.normalized, normalized=True, hounsfield=image.hounsfield,
                                            noise=image.noise)
            if repeat:
                mask = state.mask  # the same clicks as a round kept, with the same options: its answer as it was
            else:
                mask = segmenter.add_clicks(state, fg, bg, use_fusion=use_fusion, follow=settings[1],
                                            stop_at_blur=stop, use_refiner=refine)
        self.store.put(key, state)
        settle_later(image, path)  # a float image is scaled whole once its first click is answered
        data["pred"] = MetaTensor(torch.from_numpy(image.slices.mask(mask).view(np.uint8)), affine=image.affine)
        data["result"] = {"label_names": {label: 1}, "round": state.rounds, "voxels": state.mask_voxels()}
        return data

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
        """NRRD answers straight from the mask's buffer (`result_writer`); NIfTI through MONAI Label's writer."""
        ext = extension or data.get("result_extension") or ".nrrd"
        if ext != ".nrrd":
            return super().writer(data, extension, dtype)
        pred = data["pred"]
        asked = data.get("result_compress")  # unsaid (Slicer's requests): as the server chose for this request
        compress = GZIP_BY_DEFAULT.get() if asked is None else is_on(asked)
        mask = pred.as_tensor().cpu().numpy()  # not `.array`, which copies the Fortran-ordered buffer into C order
        path = write_label_nrrd(mask, pred.affine, dtype or data.get("result_dtype") or "uint8", compress)
        return path, data.get("result", {})

    def __call__(self, request, callbacks=None):
        file, result = super().__call__(request, callbacks)
        label = request.get("label") or self.labels[0]
        result["label_names"] = {label: 1}
        return file, result
