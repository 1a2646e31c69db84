"""The streaming safetensors reader/writer that `stip transform` uses agrees with safetensors itself."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from stip.shardio import ShardWriter, read_header, read_tensor


def test_round_trip_by_rows_and_blocks(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(7, 5, generator=gen), "b": torch.randn(4, 3, 2, generator=gen).to(torch.bfloat16),
               "c": torch.arange(6, dtype=torch.int64), "d": torch.randn(3, generator=gen).half()}
    save_file(tensors, str(tmp_path / "in.safetensors"))
    header = read_header(tmp_path / "in.safetensors")
    rows = torch.randperm(7, generator=gen)
    with open(tmp_path / "in.safetensors", "rb") as fh:
        assert torch.equal(read_tensor(fh, header["a"], rows), tensors["a"][rows])
        assert torch.equal(read_tensor(fh, header["a"], torch.arange(2, 5)), tensors["a"][2:5])
        assert torch.equal(read_tensor(fh, header["b"]), tensors["b"])
        specs = [(n, header[n].dtype, header[n].shape) for n in ("b", "a", "c", "d")]
        with ShardWriter(tmp_path / "out.safetensors", specs) as writer:
            writer.write("b", [read_tensor(fh, header["b"], torch.arange(0, 3)),
                               read_tensor(fh, header["b"], torch.tensor([3]))])
            writer.write("a", [read_tensor(fh, header["a"], rows)])
            writer.write_zeros("c")
            writer.write("d", [read_tensor(fh, header["d"])])
    out = load_file(str(tmp_path / "out.safetensors"))  # the stock reader accepts the file
    assert torch.equal(out["a"], tensors["a"][rows]) and torch.equal(out["b"], tensors["b"])
    assert torch.equal(out["c"], torch.zeros(6, dtype=torch.int64)) and torch.equal(out["d"], tensors["d"])


def test_writer_refuses_wrong_order_and_size(tmp_path):
    with pytest.raises(RuntimeError, match="out of order"):
        with ShardWriter(tmp_path / "x.safetensors", [("a", "F32", (2,)), ("b", "F32", (2,))]) as writer:
            writer.write("b", [torch.zeros(2)])
    with pytest.raises(RuntimeError, match="header declares 8"):
        with ShardWriter(tmp_path / "y.safetensors", [("a", "F32", (2,))]) as writer:
            writer.write("a", [torch.zeros(3)])
    with pytest.raises(RuntimeError, match="not written"):
        with ShardWriter(tmp_path / "z.safetensors", [("a", "F32", (2,))]):
            pass
