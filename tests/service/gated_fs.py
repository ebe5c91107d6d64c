"""An operator plug-in for tests: dataset URIs ``gated://<path>`` served from the local
disk, except that reading a manifest waits while ``GATE`` is closed. A real pyarrow
filesystem (``PyFileSystem``) that the selector opens like any other, made slow on
purpose and deterministically: the test decides when the manifest arrives.

Loaded with ``load_plugin_modules(["tests.service.gated_fs"])``; scorer processes import
it too, where the gate stays open.
"""

from __future__ import annotations

import threading

import pyarrow.fs as pafs

from dynams_service.core.data.manifest import MANIFEST_NAME, register_filesystem

GATE = threading.Event()  # set: manifests are served; cleared: they wait
GATE.set()
WAITING = threading.Event()  # set once a manifest read is held at the gate


class GatedHandler(pafs.FileSystemHandler):
    """The local filesystem under ``/``, with manifest lookups held at ``GATE``."""

    def __init__(self) -> None:
        self.local = pafs.LocalFileSystem()

    @staticmethod
    def _path(path: str) -> str:
        return "/" + path.lstrip("/")

    def _gate(self, path: str) -> None:
        if path.endswith(MANIFEST_NAME) and not GATE.is_set():
            WAITING.set()
            GATE.wait()

    def get_type_name(self) -> str:
        return "gated"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths):
        for p in paths:
            self._gate(p)
        infos = self.local.get_file_info([self._path(p) for p in paths])
        return [pafs.FileInfo(p, i.type, size=i.size, mtime=i.mtime)
                for p, i in zip(paths, infos, strict=True)]

    def get_file_info_selector(self, selector):
        local = pafs.FileSelector(self._path(selector.base_dir), selector.allow_not_found,
                                  selector.recursive)
        return [pafs.FileInfo(i.path.lstrip("/"), i.type, size=i.size, mtime=i.mtime)
                for i in self.local.get_file_info(local)]

    def open_input_stream(self, path):
        self._gate(path)
        return self.local.open_input_stream(self._path(path))

    def open_input_file(self, path):
        self._gate(path)
        return self.local.open_input_file(self._path(path))

    def _read_only(self, *args, **kwargs):
        raise OSError("the gated test filesystem is read-only")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = _read_only
    delete_file = move = copy_file = open_output_stream = open_append_stream = _read_only

    def __eq__(self, other) -> bool:
        return isinstance(other, GatedHandler)

    def __ne__(self, other) -> bool:
        return not self == other


register_filesystem("gated", lambda: pafs.PyFileSystem(GatedHandler()), replace=True)
