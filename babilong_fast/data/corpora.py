"""Background corpora: indexable collections of long texts (books) that the background stream samples.

A source is anything with ``len(source)``, ``source.text(i) -> str`` and a ``name``:

- :class:`BundledNovels` (default): the six Jane Austen novels shipped as package data, an offline
  stand-in for PG19. Split by book: ``"test"`` holds *Northanger Abbey* and *Persuasion* (about 22% of the
  characters), ``"train"`` the other four, so train and test backgrounds never share a passage.
- :class:`TextFolder`: every ``*.txt`` / ``*.txt.gz`` file of a folder, one book per file.
- :class:`HFDataset`: a Hugging Face dataset (e.g. ``pg19``); needs ``datasets`` and the network or a
  warm cache, and is imported only when used.
"""
from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

Split = Literal["train", "test"]

NOVELS = (
    "emma", "mansfield_park", "northanger_abbey", "persuasion", "pride_and_prejudice", "sense_and_sensibility",
)
TEST_NOVELS = ("northanger_abbey", "persuasion")


@runtime_checkable
class TextSource(Protocol):
    """An indexable collection of texts: ``len(source)`` books, ``source.text(i)`` the i-th one."""

    name: str

    def __len__(self) -> int: ...

    def text(self, index: int) -> str: ...


def _read_text(path: Path) -> str:
    """A UTF-8 text file, gunzipped when its name ends in ``.gz``; ``ValueError`` naming the file if it is not."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, gzip.BadGzipFile) as e:
        raise ValueError(f"background file {str(path)!r} is not UTF-8 text ({e}); re-encode it as UTF-8") from e


class _Files:
    """Shared behaviour of file-backed sources: one book per path, the last one read kept in memory."""

    name: str

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._cached: tuple[int, str] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def text(self, index: int) -> str:
        """The text of book ``index``."""
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, _read_text(self.paths[index]))
        return self._cached[1]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} books)"


def novels_dir() -> Path:
    """Folder of the bundled ``<novel>.txt.gz`` files."""
    return Path(str(resources.files("babilong_fast.data").joinpath("assets", "background")))


class BundledNovels(_Files):
    """The bundled Austen novels of one split (see the module docstring for the split by book).

    Args:
        split: ``"train"`` (Emma, Mansfield Park, Pride and Prejudice, Sense and Sensibility) or ``"test"``
            (Northanger Abbey, Persuasion).
    """

    def __init__(self, split: Split = "test") -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        books = TEST_NOVELS if split == "test" else tuple(b for b in NOVELS if b not in TEST_NOVELS)
        self.split = split
        self.name = f"austen/{split}"
        super().__init__([novels_dir() / f"{b}.txt.gz" for b in books])


class TextFolder(_Files):
    """Every ``*.txt`` and ``*.txt.gz`` file directly inside ``path``, sorted by name, one book each.

    Args:
        path: the folder. Raises ``FileNotFoundError`` if it does not exist and ``ValueError`` if it holds
            no such file. Use one folder per split to keep train and test backgrounds apart.
    """

    def __init__(self, path: str | Path) -> None:
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"background folder {str(folder)!r} does not exist or is not a folder")
        paths = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith((".txt", ".txt.gz")))
        if not paths:
            raise ValueError(f"background folder {str(folder)!r} holds no .txt or .txt.gz files")
        self.name = f"folder:{folder}"
        super().__init__(paths)


class HFDataset:
    """One split of a Hugging Face dataset, one row per book (e.g. ``HFDataset("pg19", "test")``).

    Loading needs the ``datasets`` package and either network access or the dataset already in the local
    Hugging Face cache; nothing is imported or downloaded until the object is built.

    Args:
        name: dataset name on the Hub (or a local path ``datasets.load_dataset`` accepts).
        split: dataset split, e.g. ``"train"``, ``"validation"``, ``"test"``.
        text_field: column holding the text.
        **load_kwargs: passed to ``datasets.load_dataset`` (e.g. ``cache_dir``, a config name).
    """

    def __init__(self, name: str, split: str = "test", text_field: str = "text", **load_kwargs: Any) -> None:
        try:
            import datasets
        except ImportError as e:
            raise ImportError(
                "HFDataset needs the 'datasets' package (pip install datasets) and network access or a warm "
                "Hugging Face cache; use BundledNovels() or TextFolder(path) to run offline"
            ) from e
        try:
            self._ds = datasets.load_dataset(name, split=split, **load_kwargs)
        except Exception as e:
            raise RuntimeError(
                f"could not load Hugging Face dataset {name!r} split {split!r}: it needs network access or the "
                f"dataset in the local cache ({e})"
            ) from e
        if text_field not in self._ds.column_names:
            raise ValueError(f"dataset {name!r} has no column {text_field!r}; columns: {self._ds.column_names}")
        self.text_field = text_field
        self.name = f"hf:{name}/{split}"

    def __len__(self) -> int:
        return len(self._ds)

    def text(self, index: int) -> str:
        """The ``text_field`` of row ``index``."""
        return self._ds[index][self.text_field]
