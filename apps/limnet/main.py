"""LIM-Net Label: the MONAI Label app. Wiring only: TaskConfigs -> infers, trainers, strategies."""

from __future__ import annotations

import logging
import os
import tempfile

from monailabel.config import settings
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import ImageNotFoundException
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.class_utils import get_class_names

import lib.configs
import lib.server_patches
from lib.datastore import SafeLocalDatastore
from lib.dicomweb import (
    SeriesConverter,
    match_only_watched_folders,
    parse_modalities,
    serialize_downloads,
    use_fast_conversion,
    widen_image_list,
)
from lib.infers.limnet import prepare_volume
from lib.validation import check_name, inside, invalid

logger = logging.getLogger(__name__)

VERSION = "0.1.0"


class MyApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.model_dir = os.path.join(app_dir, "model")
        configs = {c.split(".")[-2].lower(): c for c in get_class_names(lib.configs, "TaskConfig")}
        names = [m.strip() for m in conf.get("models", "limnet").split(",") if m.strip()]
        if "all" in names:
            names = sorted(configs)
        unknown = [n for n in names if n not in configs]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; available: {sorted(configs)}")
        self.models: dict[str, TaskConfig] = {}
        for n in names:
            module, cls = configs[n].rsplit(".", 1)
            self.models[n] = getattr(__import__(module, fromlist=[cls]), cls)()
            self.models[n].init(n, self.model_dir, conf, None)
        logger.info("+++ Using models: %s", list(self.models))
        lib.server_patches.install(answer_gzip=conf.get("answer_gzip", "auto").lower())
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="LIM-Net Label",
            description="Interactive 3D segmentation: clicks on a slice, memory propagation, multi-round fusion",
            version=VERSION,
        )

    def info(self) -> dict:
        """MONAI Label's /info, plus each model's number of open interactions (bounded by max_interactions)."""
        meta = super().info()
        for name, task in self._infers.items():
            if name in meta.get("models", {}) and hasattr(task, "store"):
                meta["models"][name]["open_interactions"] = len(task.store)
        return meta

    def infer(self, request: dict, datastore: Datastore | None = None) -> dict:
        """Images are datastore ids, or files the server itself wrote (an upload in the temporary folder, a
        session): MONAILabelApp.infer would read any existing path, and a bare id relative to the working folder."""
        image = request.get("image")
        if isinstance(image, str) and image:
            if os.path.isabs(image):
                roots = ([self.studies] if os.path.isdir(self.studies) else [])
                roots += [self._sessions.store_path] if self._sessions else []
                upload = os.path.dirname(os.path.realpath(image)) == os.path.realpath(tempfile.gettempdir())
                if not (upload or inside(image, roots)):
                    raise invalid("images outside the studies, sessions and upload folders are refused")
            else:
                check_name(image, "image id")
                if os.path.exists(image):  # a file of that name in the server's working folder: not the image
                    uri = (datastore or self.datastore()).get_image_uri(image)
                    if not uri:
                        raise ImageNotFoundException(f"Image {image} not found")
                    request = {**request, "image": uri}
        return super().infer(request, datastore)

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            ds = super().init_datastore()
            if isinstance(ds, DICOMWebDatastore):  # CT-only image list by default: widen it (lib/dicomweb.py)
                widen_image_list(ds, parse_modalities(self.conf.get("dicomweb_modalities")))
                converter = SeriesConverter(prepare=prepare_volume, on_prepared=self._adopt_image)
                serialize_downloads(ds, converter)
                match_only_watched_folders(ds)
                use_fast_conversion(converter, ds)
            return ds
        return SafeLocalDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _adopt_image(self, path: str, image) -> None:
        """A downloaded series, prepared while it was converted (`SeriesConverter`): into the infer tasks' caches."""
        for task in getattr(self, "_infers", {}).values():
            if hasattr(task, "volumes"):
                task.volumes.adopt(path, image)

    def init_infers(self) -> dict[str, InferTask]:
        return {n: c.infer() for n, c in self.models.items()}

    def init_trainers(self) -> dict[str, TrainTask]:
        if self.conf.get("skip_trainers", "false").lower() == "true":
            return {}
        return {n: c.trainer() for n, c in self.models.items() if c.trainer()}

    def init_strategies(self) -> dict[str, Strategy]:
        strategies: dict[str, Strategy] = {"random": Random(), "first": First()}
        for c in self.models.values():
            strategies.update(c.strategy() or {})
        return strategies

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        methods: dict[str, ScoringMethod] = {}
        for c in self.models.values():
            methods.update(c.scoring_method() or {})
        return methods
