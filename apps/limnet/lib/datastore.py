"""A local datastore that never loses a saved label: atomic writes, earlier versions kept, names checked.

MONAI Label 0.8.5's LocalDatastore copies a label straight onto its final name (a server killed mid-copy leaves
a torn file), overwrites the previous label without a trace, rewrites datastore_v2.json in place, and joins
image ids and label tags into paths unchecked (`PUT /datastore/image?image=../../x` wrote outside the studies
folder, `DELETE /datastore/?id=...` removed it again).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from typing import Any

from filelock import FileLock
from monailabel.datastore.local import DataModel, LocalDatastore
from monailabel.interfaces.exception import ImageNotFoundException, MONAILabelError, MONAILabelException

from lib.validation import check_name, invalid

TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HISTORY = ".history"
HISTORY_KEEP = 50  # earlier versions kept per label; older ones are removed so that saves cannot fill the disk
TEMP_PREFIXES = (".saving-", ".datastore-")


def _fsync_dir(folder: str) -> None:
    """Make a rename in `folder` durable (power loss); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_copy(src: str, dest: str) -> None:
    """Copy to a temporary file beside `dest`, flush it to disk, then rename over `dest` in one step."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".saving-", suffix=os.path.basename(dest))
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
        _fsync_dir(os.path.dirname(dest))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def keep_version(path: str, folder: str) -> str:
    """Keep the file at `path` in `folder` as `<millis>-<name>`: a hard link (atomic, no copy; the next save renames
    a new file over `path`, the link keeps the old one), else an atomic copy. Returns the kept file."""
    os.makedirs(folder, exist_ok=True)
    stem, n = f"{int(time.time() * 1000)}-{os.path.basename(path)}", 0
    keep = os.path.join(folder, stem)
    while os.path.exists(keep):  # two saves in one millisecond
        n += 1
        keep = os.path.join(folder, f"{stem.split('-', 1)[0]}.{n}-{os.path.basename(path)}")
    try:
        os.link(path, keep)
    except OSError:
        atomic_copy(path, keep)
    _prune(folder, os.path.basename(path))
    return keep


def _prune(folder: str, name: str, keep: int = HISTORY_KEEP) -> None:
    def stamp(f: str) -> float:
        try:
            return float(f.split("-", 1)[0])
        except ValueError:
            return float("inf")  # not ours: never removed

    versions = sorted((f for f in os.listdir(folder) if f.partition("-")[2] == name and stamp(f) != float("inf")),
                      key=stamp)
    for old in versions[:-keep] if len(versions) > keep else []:
        os.remove(os.path.join(folder, old))


def check_tag(label_tag: object) -> str:
    if not isinstance(label_tag, str) or not TAG.fullmatch(label_tag):
        raise MONAILabelException(MONAILabelError.INVALID_INPUT,
                                  "label tag must be letters, digits, '_', '.' or '-' (at most 64)")
    return label_tag


class SafeLocalDatastore(LocalDatastore):
    def __init__(self, datastore_path: str, *args, **kwargs) -> None:
        # 0.8.5's file watcher thread reconciles the index while a request removes or lists images: one at a time
        self._mutex = threading.RLock()
        super().__init__(datastore_path, *args, **kwargs)
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Temporary files of saves a killed server never finished (the label they were for is intact). Under the
        datastore lock, so a save in progress in another process (training) is not touched."""
        with FileLock(self._lock_file):
            folders = [self._datastore_path, self._datastore.label_path(None)]
            labels = self._datastore.label_path(None)
            folders += [os.path.join(labels, d) for d in os.listdir(labels) if os.path.isdir(os.path.join(labels, d))]
            folders += [os.path.join(f, HISTORY) for f in folders if os.path.isdir(os.path.join(f, HISTORY))]
            for folder in folders:
                for f in os.listdir(folder):
                    if f.startswith(TEMP_PREFIXES) and os.path.isfile(os.path.join(folder, f)):
                        os.remove(os.path.join(folder, f))

    def _check_ext(self, filename: str, what: str) -> str:
        _, ext = self._to_id(os.path.basename(filename))
        allowed = [e.replace("*", "") for e in self._extensions]
        if ext not in allowed:
            raise invalid(f"{what} must be one of {allowed}; got a {ext or 'nameless'} file")
        return ext

    # -- every id or tag that becomes part of a path is checked first -----------------------------------------
    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        check_name(image_id or self._to_id(os.path.basename(image_filename))[0], "image id")
        self._check_ext(image_filename, "image file")
        return super().add_image(image_id, image_filename, image_info)

    def refresh(self) -> None:
        with self._mutex:
            super().refresh()

    def remove_image(self, image_id: str) -> None:
        with self._mutex:
            super().remove_image(check_name(image_id, "image id"))
            self.refresh()  # with auto reload, 0.8.5 left the listing to the file watcher: a list right after had it

    def remove_label(self, label_id: str, label_tag: str) -> None:
        with self._mutex:
            super().remove_label(check_name(label_id, "label id"), check_tag(label_tag))
            self.refresh()

    def get_image_uri(self, image_id: str) -> str:
        return super().get_image_uri(check_name(image_id, "image id"))

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        return super().get_label_uri(check_name(label_id, "label id"), check_tag(label_tag))

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        return super().get_image_info(check_name(image_id, "image id"))

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        return super().get_label_info(check_name(label_id, "label id"), check_tag(label_tag))

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        return super().update_image_info(check_name(image_id, "image id"), info)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        return super().update_label_info(check_name(label_id, "label id"), check_tag(label_tag), info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """LocalDatastore.save_label, with the names checked, the replaced label kept and the copy atomic."""
        check_tag(label_tag)
        check_name(image_id, "image id")
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise ImageNotFoundException(f"Image {image_id} not found")
        label_ext = self._check_ext(label_filename, "label file")
        label_path = self._datastore.label_path(label_tag)
        name = self._filename(image_id, label_ext)
        dest = os.path.join(label_path, name)
        with FileLock(self._lock_file):
            os.makedirs(label_path, exist_ok=True)
            # keep the version this save replaces
            kept = keep_version(dest, os.path.join(label_path, HISTORY)) if os.path.exists(dest) else None
            before, copied = obj.labels.get(label_tag), False
            try:
                atomic_copy(label_filename, dest)
                copied = True
                info = dict(label_info or {})
                info.update({"ts": int(time.time()), "name": name})
                obj.labels[label_tag] = DataModel(info=info, ext=label_ext)
                self._update_datastore_file(lock=False)
            except BaseException:  # a save that fails (a full disk) leaves the label and the index as they were
                self._undo_save(dest, kept, copied)
                if before is None:
                    obj.labels.pop(label_tag, None)
                else:
                    obj.labels[label_tag] = before
                raise
        return image_id

    @staticmethod
    def _undo_save(dest: str, kept: str | None, copied: bool) -> None:
        """Put back the label a failed save replaced (`kept`, its history copy) or remove the one it added."""
        if kept is not None:
            if copied:
                os.replace(kept, dest)
            else:  # `dest` is still the old label; the history entry would only repeat it
                os.remove(kept)
        elif copied and os.path.exists(dest):
            os.remove(dest)

    def _update_datastore_file(self, lock: bool = True) -> None:
        def write() -> None:
            self._ignore_event_config = True
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self._datastore_config_path), prefix=".datastore-")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._datastore_config_path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            _fsync_dir(os.path.dirname(self._datastore_config_path))
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()
