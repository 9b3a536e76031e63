"""Every reader on a tiny fabricated tree in its dataset's exact layout (and known variants)."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from unimmad_cl.data.readers import FORMATS, get_reader, list_samples
from unimmad_cl.errors import UserError


def png(path: Path, value: int = 0, size=(6, 6), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = size + (3,) if mode == "RGB" else size
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)
    return path


def tiff(path: Path, size=(6, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.ones(size + (3,), dtype=np.float32), photometric="rgb")
    return path


def summary(samples):
    return [(s.cls, s.split, s.defect, s.stem, s.label, s.mask_path is not None) for s in samples]


def test_formats_are_all_importable_and_unknown_is_an_error():
    for fmt in FORMATS:
        reader = get_reader(fmt)
        assert callable(reader.classes) and callable(reader.samples)
    with pytest.raises(UserError, match="unknown dataset format 'kitti'"):
        get_reader("kitti")


# ----------------------------------------------------------------------------- MVTec AD, VisA


def mvtec_tree(root: Path, mask_suffix="_mask"):
    base = root / "bottle"
    png(base / "train/good/000.png", mode="RGB")
    png(base / "train/good/001.png", mode="RGB")
    png(base / "test/good/000.png", mode="RGB")
    png(base / "test/broken_large/000.png", mode="RGB")
    png(base / f"ground_truth/broken_large/000{mask_suffix}.png", 255)
    return root


@pytest.mark.parametrize("suffix", ["_mask", ""])
def test_mvtec_both_mask_namings(tmp_path, suffix):
    root = mvtec_tree(tmp_path, suffix)
    reader = get_reader("mvtec")
    assert reader.classes(root) == ["bottle"]
    assert len(reader.samples(root, ["bottle"], ["rgb"], "train")) == 2
    test = reader.samples(root, ["bottle"], ["rgb"], "test")
    assert summary(test) == [
        ("bottle", "test", "broken_large", "000", 1, True),
        ("bottle", "test", "good", "000", 0, False),
    ]
    assert test[0].mask_path.endswith(f"000{suffix}.png") and test[0].modalities == ("rgb",)


def test_mvtec_defect_without_mask_names_the_image(tmp_path):
    root = mvtec_tree(tmp_path)
    (root / "bottle/ground_truth/broken_large/000_mask.png").unlink()
    with pytest.raises(UserError, match=r"defect image .*broken_large/000.png has no mask"):
        get_reader("mvtec").samples(root, ["bottle"], ["rgb"], "test")


def test_visa_one_class_split_with_jpg_images(tmp_path):
    base = tmp_path / "candle"
    png(base / "train/good/0001.JPG", mode="RGB")
    png(base / "test/good/0002.JPG", mode="RGB")
    png(base / "test/bad/0003.JPG", mode="RGB")
    png(base / "ground_truth/bad/0003.png", 255)
    samples = list_samples("visa", tmp_path, ["rgb"], "test", task="visa")
    assert summary(samples) == [
        ("candle", "test", "bad", "0003", 1, True),
        ("candle", "test", "good", "0002", 0, False),
    ]
    assert all(s.task == "visa" for s in samples)


# ----------------------------------------------------------------------------- MVTec 3D-AD


def mvtec3d_tree(root: Path):
    base = root / "bagel"
    for stem in ("000", "001"):
        png(base / f"train/good/rgb/{stem}.png", mode="RGB")
        tiff(base / f"train/good/xyz/{stem}.tiff")
    png(base / "validation/good/rgb/000.png", mode="RGB")
    tiff(base / "validation/good/xyz/000.tiff")
    for defect in ("good", "crack"):
        png(base / f"test/{defect}/rgb/000.png", mode="RGB")
        tiff(base / f"test/{defect}/xyz/000.tiff")
        png(base / f"test/{defect}/gt/000.png", 255 if defect == "crack" else 0)
    return root


def test_mvtec3d_rgb_and_depth(tmp_path):
    root = mvtec3d_tree(tmp_path)
    train = list_samples("mvtec3d", root, ["rgb", "depth"], "train")
    assert [s.stem for s in train] == ["000", "001"]  # validation/ is not training data
    assert train[0].paths[1].endswith("xyz/000.tiff") and train[0].modalities == ("rgb", "depth")
    test = list_samples("mvtec3d", root, ["depth"], "test")
    assert summary(test) == [("bagel", "test", "crack", "000", 1, True), ("bagel", "test", "good", "000", 0, False)]
    assert test[0].mask_path.endswith("crack/gt/000.png")


def test_mvtec3d_missing_partner_names_the_file(tmp_path):
    root = mvtec3d_tree(tmp_path)
    (root / "bagel/train/good/xyz/001.tiff").unlink()
    with pytest.raises(UserError, match=r"depth file missing for .*rgb/001.png: expected .*xyz/001"):
        list_samples("mvtec3d", root, ["rgb", "depth"], "train")


def test_mvtec3d_rejects_a_modality_it_lacks(tmp_path):
    with pytest.raises(UserError, match="format 'mvtec3d' has no modality 'infrared'"):
        list_samples("mvtec3d", mvtec3d_tree(tmp_path), ["infrared"], "train")


# ----------------------------------------------------------------------------- Eyecandies


def eyecandies_raw(root: Path):
    def item(split, idx, anomalous=False):
        data = root / "CandyCane" / split / "data"
        for name in ("image_0", "image_4", "normals"):
            png(data / f"{idx}_{name}.png", mode="RGB")
        Image.fromarray(np.full((6, 6), 30000, np.uint16)).save(data / f"{idx}_depth.png")
        (data / f"{idx}_info_depth.yaml").write_text("normalization: {min: 0.3, max: 0.4}\n")
        (data / f"{idx}_metadata.yaml").write_text(f"anomalous: {int(anomalous)}\n")
        png(data / f"{idx}_mask.png", 255 if anomalous else 0)

    item("train", "000")
    item("train", "001")
    item("val", "000")
    item("test_public", "00")
    item("test_public", "01", anomalous=True)
    return root


def test_eyecandies_raw_layout(tmp_path):
    root = eyecandies_raw(tmp_path)
    assert get_reader("eyecandies").classes(root) == ["CandyCane"]
    train = list_samples("eyecandies", root, ["rgb", "depth"], "train")
    assert [s.stem for s in train] == ["000", "001"]
    assert train[0].paths[0].endswith("000_image_4.png") and train[0].paths[1].endswith("000_depth.png")
    test = list_samples("eyecandies", root, ["rgb", "depth", "normals"], "test")
    assert summary(test) == [
        ("CandyCane", "test", "good", "00", 0, False),
        ("CandyCane", "test", "bad", "01", 1, True),
    ]


def test_eyecandies_converted_to_mvtec3d_layout(tmp_path):
    root = mvtec3d_tree(tmp_path)
    assert len(list_samples("eyecandies", root, ["rgb", "depth"], "test")) == 2


# ----------------------------------------------------------------------------- MulSen-AD


def mulsen_tree(root: Path):
    base = root / "capsule"
    for sensor, mode in (("RGB", "RGB"), ("Infrared", "L")):
        for n in (0, 2, 10):
            png(base / f"{sensor}/train/{n}.png", mode=mode)
        png(base / f"{sensor}/test/good/0.png", mode=mode)
        png(base / f"{sensor}/test/crack/1.png", mode=mode)
        png(base / f"{sensor}/test/crack/2.png", mode=mode)
    # sample 1 is anomalous in RGB only; sample 2 in infrared only
    png(base / "RGB/GT/crack/1.png", 255)
    png(base / "RGB/GT/crack/2.png", 0)
    png(base / "Infrared/GT/crack/1.png", 0)
    png(base / "Infrared/GT/crack/2.png", 255)
    return root


def test_mulsen_numeric_order_and_per_modality_labels(tmp_path):
    root = mulsen_tree(tmp_path)
    train = list_samples("mulsen", root, ["infrared"], "train")
    assert [s.stem for s in train] == ["0", "2", "10"]
    infrared = {s.stem: s.label for s in list_samples("mulsen", root, ["infrared"], "test")}
    rgb = {s.stem: s.label for s in list_samples("mulsen", root, ["rgb"], "test")}
    assert infrared == {"1": 0, "2": 1, "0": 0} and rgb == {"1": 1, "2": 0, "0": 0}
    both = list_samples("mulsen", root, ["rgb", "infrared"], "test")
    assert {s.stem: s.label for s in both} == {"1": 1, "2": 1, "0": 0}
    assert next(s for s in both if s.stem == "2").mask_path.endswith("Infrared/GT/crack/2.png")


# ----------------------------------------------------------------------------- BMAD


@pytest.mark.parametrize("mask_folder", ["label", "anomaly_mask"])
def test_bmad_pixel_level_variants(tmp_path, mask_folder):
    base = tmp_path / "Brain"
    png(base / "train/good/a.png")
    png(base / "valid/good/img/v.png")
    png(base / "test/good/img/b.png")
    png(base / "test/Ungood/img/c.png")
    png(base / f"test/Ungood/{mask_folder}/c.png", 255)
    test = list_samples("bmad", tmp_path, ["mri_flair"], "test")
    assert summary(test) == [("Brain", "test", "good", "b", 0, False), ("Brain", "test", "Ungood", "c", 1, True)]
    assert test[1].mask_path.endswith(f"{mask_folder}/c.png")


def test_bmad_image_level_only_category(tmp_path):
    base = tmp_path / "OCT2017"
    png(base / "train/good/a.png")
    png(base / "test/good/b.png")
    png(base / "test/Ungood/c.png")
    test = list_samples("bmad", tmp_path, ["oct"], "test")
    assert summary(test) == [("OCT2017", "test", "good", "b", 0, False), ("OCT2017", "test", "Ungood", "c", 1, False)]


def test_bmad_takes_one_image_modality(tmp_path):
    png(tmp_path / "Liver/train/good/a.png")
    with pytest.raises(UserError, match="exactly one image modality"):
        list_samples("bmad", tmp_path, ["ct", "depth"], "train")


# ----------------------------------------------------------------------------- BraTS


def brats_case(folder: Path, case: str, seg: int | None, seqs=("flair", "t1", "t1ce", "t2")):
    for seq in seqs:
        png(folder / f"{case}_{seq}.png")
    if seg is not None:
        mask = np.zeros((6, 6), np.uint8)
        mask[1, 1] = seg
        Image.fromarray(mask).save(folder / f"{case}_seg.png")


def test_brats_four_sequences_label_from_segmentation(tmp_path):
    brats_case(tmp_path / "brain/train", "BraTS_001_s60", 0)
    brats_case(tmp_path / "brain/train", "BraTS_002_s60", None)
    brats_case(tmp_path / "brain/test", "BraTS_003_s70", 4)
    brats_case(tmp_path / "brain/test", "BraTS_004_s70", 0)
    brats_case(tmp_path / "brain/test/good", "BraTS_005_s70", None)
    mods = ["mri_flair", "mri_t1", "mri_t1ce", "mri_t2"]
    train = list_samples("brats", tmp_path, mods, "train")
    assert [s.label for s in train] == [0, 0] and len(train[0].paths) == 4
    assert train[0].paths[2].endswith("_t1ce.png") and train[0].paths[1].endswith("_t1.png")
    test = list_samples("brats", tmp_path, mods, "test")
    assert summary(test) == [
        ("brain", "test", "tumour", "BraTS_003_s70", 1, True),
        ("brain", "test", "good", "BraTS_004_s70", 0, False),
        ("brain", "test", "good", "BraTS_005_s70", 0, False),
    ]


def test_brats_missing_sequence_names_the_file(tmp_path):
    brats_case(tmp_path / "brain/train", "c1", 0, seqs=("flair", "t1", "t2"))
    with pytest.raises(UserError, match=r"mri_t1ce file missing for case 'c1': expected .*c1_t1ce.png"):
        list_samples("brats", tmp_path, ["mri_flair", "mri_t1ce"], "train")


# ----------------------------------------------------------------------------- generic folder


def folder_tree(root: Path):
    base = root / "widget"
    for stem in ("a", "b"):
        png(base / f"train/good/rgb/{stem}.png", mode="RGB")
        tiff(base / f"train/good/depth/{stem}.tiff")
    for group in ("good", "dent"):
        png(base / f"test/{group}/rgb/c.png", mode="RGB")
        tiff(base / f"test/{group}/depth/c.tiff")
    png(base / "ground_truth/dent/c.png", 255)
    return root


def test_folder_layout_multi_modal(tmp_path):
    root = folder_tree(tmp_path)
    reader = get_reader("folder")
    assert reader.classes(root) == ["widget"] and reader.DEFAULT_MODALITIES == ()
    train = reader.samples(root, ["widget"], ["rgb", "depth"], "train")
    assert [(s.stem, len(s.paths)) for s in train] == [("a", 2), ("b", 2)]
    test = reader.samples(root, ["widget"], ["depth", "rgb"], "test")
    assert summary(test) == [("widget", "test", "dent", "c", 1, True), ("widget", "test", "good", "c", 0, False)]
    assert test[0].paths[0].endswith("depth/c.tiff")


def test_folder_extra_stem_in_a_later_modality_is_an_error(tmp_path):
    root = folder_tree(tmp_path)
    tiff(root / "widget/train/good/depth/z.tiff")
    with pytest.raises(UserError, match=r"rgb file missing for .*depth/z.tiff: expected .*rgb/z"):
        get_reader("folder").samples(root, ["widget"], ["rgb", "depth"], "train")


def test_folder_defect_without_mask(tmp_path):
    root = folder_tree(tmp_path)
    (root / "widget/ground_truth/dent/c.png").unlink()
    with pytest.raises(UserError, match=r"defect image .*dent/rgb/c.png has no mask"):
        get_reader("folder").samples(root, ["widget"], ["rgb", "depth"], "test")


def test_folder_mask_of_another_size(tmp_path):
    root = folder_tree(tmp_path)
    png(root / "widget/ground_truth/dent/c.png", 255, size=(4, 6))
    with pytest.raises(UserError, match=r"mask .*dent/c.png is 6x4 but image .*rgb/c.png is 6x6"):
        get_reader("folder").samples(root, ["widget"], ["rgb", "depth"], "test")


def test_bmad_mask_of_another_size(tmp_path):
    png(tmp_path / "Liver/train/good/a.png")
    png(tmp_path / "Liver/test/good/img/b.png")
    png(tmp_path / "Liver/test/Ungood/img/c.png")
    png(tmp_path / "Liver/test/Ungood/label/c.png", 255, size=(5, 5))
    with pytest.raises(UserError, match="is 5x5 but image"):
        list_samples("bmad", tmp_path, ["ct"], "test")


# ----------------------------------------------------------------------------- shared bad input


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_root_is_named(tmp_path, fmt):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=r"dataset root not found: .*nowhere"):
        get_reader(fmt).classes(missing)
    with pytest.raises(UserError, match=r"dataset root not found: .*nowhere"):
        get_reader(fmt).samples(missing, ["x"], ["rgb"], "train")


def test_missing_class_folder_is_named(tmp_path):
    root = folder_tree(tmp_path)
    with pytest.raises(UserError, match=r"class folder 'gadget' not found: .*gadget"):
        get_reader("folder").samples(root, ["gadget"], ["rgb"], "train")


def test_root_without_classes(tmp_path):
    with pytest.raises(UserError, match="no class folders under"):
        get_reader("mvtec").classes(tmp_path)


@pytest.mark.parametrize("mods", [[], ["rgb", "depth", "infrared", "ct", "oct"]])
def test_zero_or_too_many_modalities(tmp_path, mods):
    with pytest.raises(UserError, match="a task needs 1 to 4 modalities"):
        get_reader("folder").samples(folder_tree(tmp_path), ["widget"], mods, "train")


def test_missing_modality_folder_is_named(tmp_path):
    with pytest.raises(UserError, match=r"infrared folder not found: .*good/infrared"):
        get_reader("folder").samples(folder_tree(tmp_path), ["widget"], ["infrared"], "train")
