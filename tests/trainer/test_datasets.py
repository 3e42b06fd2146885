"""Each dataset parser against a small fixture in that dataset's real file format; splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from qualitynet.errors import QualityNetError
from qualitynet.trainer.datasets import Split, check_images, load_dataset, make_split


def _images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (8, 6), (i * 20 % 255, 80, 160)).save(folder / name)


def test_koniq10k(tmp_path: Path) -> None:
    (tmp_path / "koniq10k_scores_and_distributions.csv").write_text(
        '"image_name","c1","c2","c3","c4","c5","c_total","MOS","SD","MOS_zscore"\n'
        '"10004473376.jpg",0,0,25,73,7,105,3.828571429,0.527278208,77.38411326\n'
        '"10007357496.jpg",0,3,45,47,1,96,3.479166667,0.580003263,68.60598534\n')
    _images(tmp_path / "512x384", ["10004473376.jpg", "10007357496.jpg"])
    index = load_dataset("koniq10k", tmp_path)
    assert [p.name for p in index.paths] == ["10004473376.jpg", "10007357496.jpg"]
    assert index.paths[0].parent.name == "512x384"
    np.testing.assert_allclose(index.mos, [3.828571429, 3.479166667])
    assert (index.score_scale.low, index.score_scale.high) == (1.0, 5.0)


def test_livec_drops_the_seven_training_images(tmp_path: Path) -> None:
    names = [f"t{i}.bmp" for i in range(1, 8)] + ["10.bmp", "100.bmp", "1000.JPG"]
    cell = np.empty((len(names), 1), dtype=object)  # MATLAB cell array, as in the release
    for i, name in enumerate(names):
        cell[i, 0] = np.array([name])
    (tmp_path / "Data").mkdir()
    savemat(tmp_path / "Data" / "AllImages_release.mat", {"AllImages_release": cell})
    mos = np.array([[50.0] * 7 + [63.9, 25.3, 71.5]])
    savemat(tmp_path / "Data" / "AllMOS_release.mat", {"AllMOS_release": mos})
    index = load_dataset("livec", tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in index.paths] == ["Images/10.bmp", "Images/100.bmp",
                                                                          "Images/1000.JPG"]
    np.testing.assert_allclose(index.mos, [63.9, 25.3, 71.5])
    assert index.score_scale.high == 100.0


def test_tid2013_groups_by_reference(tmp_path: Path) -> None:
    (tmp_path / "mos_with_names.txt").write_text(
        "5.51429 i01_01_1.bmp\n5.56757 i01_01_2.bmp\n4.94444 I02_01_1.BMP\n3.11111 i25_24_5.bmp\n")
    index = load_dataset("tid2013", tmp_path)
    assert index.groups == ["01", "01", "02", "25"]
    assert index.paths[2] == tmp_path / "distorted_images" / "I02_01_1.BMP"
    assert index.mos[3] == pytest.approx(3.11111)


def test_kadid10k_groups_by_reference(tmp_path: Path) -> None:
    (tmp_path / "dmos.csv").write_text(
        "dist_img,ref_img,dmos,var\nI01_01_01.png,I01.png,4.57,0.496\nI01_01_02.png,I01.png,4.33,0.869\n"
        "I02_01_01.png,I02.png,3.9,0.5\n")
    index = load_dataset("kadid10k", tmp_path)
    assert index.groups == ["I01.png", "I01.png", "I02.png"]
    assert index.paths[1] == tmp_path / "images" / "I01_01_02.png"


def test_generic_csv_with_awkward_names_and_custom_columns(tmp_path: Path) -> None:
    names = ["my photo (1).jpg", "été/ü 2.png"]
    _images(tmp_path / "imgs", ["my photo (1).jpg"])
    _images(tmp_path / "imgs" / "été", ["ü 2.png"])
    (tmp_path / "labels.csv").write_text("file,quality\n" + "".join(f'"imgs/{n}",{s}\n' for n, s in
                                                                    zip(names, (61.0, 42.5))))
    index = load_dataset("csv", csv_path=tmp_path / "labels.csv", path_column="file", score_column="quality",
                         score_range=(0, 100))
    assert [p.exists() for p in index.paths] == [True, True]
    assert index.score_scale.to_unit(61.0) == pytest.approx(0.61)
    check_images(index.paths)
    with pytest.raises(QualityNetError, match="no column 'score'"):
        load_dataset("csv", csv_path=tmp_path / "labels.csv", path_column="file")


def test_csv_reference_column_names_each_rows_reference_image(tmp_path: Path) -> None:
    rows = "image,score,group,reference\na.png,5,cat,cat_0\nb.png,3,cat,cat_0\nc.png,4,cat,cat_1\n"
    (tmp_path / "scores.csv").write_text(rows)
    index = load_dataset("csv", csv_path=tmp_path / "scores.csv")
    assert [index.reference(i) for i in range(3)] == ["cat_0", "cat_0", "cat_1"]
    assert index.groups == ["cat"] * 3
    (tmp_path / "plain.csv").write_text("image,score,group\na.png,5,cat\nb.png,3,dog\n")
    plain = load_dataset("csv", csv_path=tmp_path / "plain.csv")
    assert [plain.reference(i) for i in range(2)] == ["cat", "dog"]  # no column: the group is the reference


def test_missing_files_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QualityNetError, match="koniq10k_scores_and_distributions.csv: CSV file not found"):
        load_dataset("koniq10k", tmp_path)
    with pytest.raises(QualityNetError, match="needs --csv"):
        load_dataset("csv")


def test_check_images_lists_every_bad_file(tmp_path: Path) -> None:
    _images(tmp_path, ["good.png"])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    paths = [tmp_path / n for n in ("good.png", "empty.jpg", "text.png", "gone.jpg")]
    with pytest.raises(QualityNetError) as info:
        check_images(paths)
    message = str(info.value)
    assert message.startswith("3 of 4 image(s) cannot be read")
    assert "empty.jpg" in message and "text.png" in message and "gone.jpg: missing" in message
    assert "good.png" not in message


def test_split_is_reproducible_and_keeps_groups_apart(demo_dataset: Path, tmp_path: Path) -> None:
    index = load_dataset("csv", csv_path=demo_dataset)
    first, again, other = make_split(index, seed=3), make_split(index, seed=3), make_split(index, seed=4)
    assert first == again and first != other
    group_of = {index.key(i): index.groups[i] for i in range(len(index))}
    parts = [{group_of[k] for k in getattr(first, name)} for name in ("train", "val", "test")]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sorted(first.train + first.val + first.test) == sorted(group_of)
    first.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json") == first
