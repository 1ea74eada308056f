"""Data sources as one registry (avssl.data.sources): one row type, one extension list, one folder walk."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mediagen import make_av_file

from avssl.data import sources
from avssl.data.datasets import VIDEO_EXTENSIONS, scan_folder
from avssl.data.manifest import ManifestRow
from avssl.data_tools.stats import MEDIA_EXTENSIONS as STATS_EXTENSIONS
from avssl.evaluation.sources import resolve_items


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree") / "clips"
    for i in range(6):
        (root / ("dog" if i % 2 else "cat")).mkdir(parents=True, exist_ok=True)
        make_av_file(root / ("dog" if i % 2 else "cat") / f"c{i}.mp4", duration=1.0, size=(64, 48))
    (root / "notes.txt").write_text("not media")
    return root


def test_one_extension_list_and_walk(tree: Path):
    assert VIDEO_EXTENSIONS is sources.MEDIA_EXTENSIONS and STATS_EXTENSIONS is sources.MEDIA_EXTENSIONS
    found = sources.find_media(tree)
    assert [p.name for p in found] == ["c0.mp4", "c2.mp4", "c4.mp4", "c1.mp4", "c3.mp4", "c5.mp4"]
    assert [r.path for r in scan_folder(tree)] == [str(p) for p in found]


def test_registry_lists_and_refuses_unknown_sources():
    assert {"demo", "folder", "manifest", "shards"} <= set(sources.available_sources())
    assert sources.get_source("shards").streaming
    with pytest.raises(ValueError, match=r"data.source must be one of .*'folder'.*got 'folderz'"):
        sources.get_source("folderz")
    with pytest.raises(ValueError, match="data.path must be set"):
        sources.source_rows("folder")


def test_folder_split_is_keyed_by_the_relative_path(tree: Path, tmp_path: Path):
    a = sources.source_rows("folder", tree, {"val_fraction": 0.5, "seed": 3}).rows
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(tree, moved)
    b = sources.source_rows("folder", moved, {"val_fraction": 0.5, "seed": 3}).rows
    split = {Path(r.path).relative_to(tree).as_posix(): r.split for r in a}
    assert split == {Path(r.path).relative_to(moved).as_posix(): r.split for r in b}
    assert set(split.values()) == {"train", "val"}


def test_folder_split_of_symlinked_recordings(tree: Path, tmp_path: Path):
    """Recordings linked into the dataset folder from elsewhere are split by their name in the folder (resolving
    the link made the relative path fail: 'is not in the subpath')."""
    store, data = tmp_path / "store", tmp_path / "data"
    shutil.copytree(tree, store)
    for p in sources.find_media(store):
        link = data / p.relative_to(store)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(p)
    rows = sources.source_rows("folder", data, {"val_fraction": 0.5, "seed": 3}).rows
    assert all(Path(r.path).is_symlink() for r in rows) and len(rows) == 6
    linked = {Path(r.path).relative_to(data).as_posix(): r.split for r in rows}
    stored = {Path(r.path).relative_to(store).as_posix(): r.split
              for r in sources.source_rows("folder", store, {"val_fraction": 0.5, "seed": 3}).rows}
    assert linked == stored and set(linked.values()) == {"train", "val"}


def test_a_registered_source_reaches_evaluation(tree: Path):
    @sources.register_source("test_listing")
    def _listing(path, options):  # noqa: ANN001, ANN202 - a user's source: a text file of clip paths
        return sources.SourceRows([ManifestRow(path=line, start=0.0, end=1.0, meta={"label": "x"})
                                   for line in Path(path).read_text().split()])

    try:
        listing = tree.parent / "list.txt"
        listing.write_text("\n".join(str(p) for p in sources.find_media(tree)))
        items = resolve_items("test_listing", str(listing))
        assert len(items) == 6 and {it.label for it in items} == {"x"}
    finally:
        sources._SOURCES.pop("test_listing")


def test_folder_split_stays_put_across_run_seeds(tree: Path):
    """``data.split_seed`` (default 0) keys the folder split, not the run's ``seed``: a seed sweep trains and
    validates on the same files; ``split_seed: null`` follows the run's seed."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from avssl.lit.datamodule import AVDataModule

    def splits(seed: int, *overrides: str) -> dict[str, str]:
        with initialize_config_module("avssl.conf", version_base="1.3"):
            cfg = compose("train", overrides=["data=folder", f"data.path={tree}", "data.val_fraction=0.5",
                                              *overrides])
        dm = AVDataModule(OmegaConf.to_container(cfg.data, resolve=True), seed=seed)  # type: ignore[arg-type]
        return {Path(r.path).name: r.split for r in dm._rows()}

    fixed = [splits(s) for s in range(4)]
    assert all(f == fixed[0] for f in fixed) and set(fixed[0].values()) == {"train", "val"}
    assert fixed[0] == {Path(r.path).name: r.split
                        for r in sources.source_rows("folder", tree, {"val_fraction": 0.5, "seed": 0}).rows}
    following = [splits(s, "data.split_seed=null") for s in range(4)]
    assert len({tuple(sorted(f.items())) for f in following}) > 1  # 6 files, 4 seeds: the split moves
    assert splits(7, "data.split_seed=3") == {
        Path(r.path).name: r.split for r in sources.source_rows("folder", tree, {"val_fraction": 0.5, "seed": 3}).rows}
    with initialize_config_module("avssl.conf", version_base="1.3"):  # the typed schema refuses it at launch;
        cfg = compose("train", overrides=["data=folder", f"data.path={tree}"])  # a hand-made dict gets this:
    data = {**OmegaConf.to_container(cfg.data, resolve=True), "split_seed": "abc"}  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"data.split_seed must be an integer or null .*got 'abc'"):
        AVDataModule(data, seed=0)._rows()


def test_folder_of_recordings_shorter_than_a_clip_says_so(tree: Path):
    """1 s recordings and clips of 4 x 0.5 s: setup stops with the folder, the split, how many rows were too short
    and which keys make a clip, not with an empty loader later."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from avssl.lit.datamodule import AVDataModule

    with initialize_config_module("avssl.conf", version_base="1.3"):
        cfg = compose("train", overrides=["data=folder", f"data.path={tree}", "data.num_segments=4",
                                          "data.segment_duration=0.5"])
    dm = AVDataModule(OmegaConf.to_container(cfg.data, resolve=True), seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"{tree}: no usable clips in split 'train' .*one clip of 2.00 s: "
                                         r"\d+ too short; .*data.num_segments x data.segment_duration"):
        dm.setup("fit")
