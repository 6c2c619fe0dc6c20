"""Opening a GGUF file and reading its metadata as plain, type-checked Python values."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import numpy.typing as npt
from gguf import GGUFReader, GGUFValueType, ReaderField

from backend.loader.errors import ModelLoadError

_NUMBER_TYPES = frozenset(GGUFReader.gguf_scalar_to_np) - {GGUFValueType.BOOL}


class _PlainArrayReader(GGUFReader):
    """``GGUFReader`` whose fields are plain ndarray views of the mapping instead of ``np.memmap`` slices.

    Every metadata value becomes a few tiny arrays, and a memmap subclass pays ``__array_finalize__``
    on each one: about 2 s for a 49k-token vocabulary, against 0.5 s for plain views of the same
    memory. The values and the layout of ``fields`` and ``tensors`` are exactly the reader's own.
    """

    _plain: npt.NDArray[np.uint8] | None = None

    def _get(
        self,
        offset: int,
        dtype: npt.DTypeLike,
        count: int = 1,
        override_order: Literal["I", "S", "<"] | None = None,
    ) -> npt.NDArray[Any]:
        plain = self._plain
        if plain is None or plain.base is not self.data:
            plain = self._plain = self.data.view(np.ndarray)
        item = np.dtype(dtype)
        count = int(count)
        array = plain[offset : offset + item.itemsize * count].view(item)[:count]
        order = self.byte_order if override_order is None else override_order
        return array if order == "I" else array.view(item.newbyteorder(order))


def open_gguf(file: IO[bytes], path: Path) -> GGUFReader:
    """Parse the header, metadata and tensor table of an open GGUF file (memory-mapped copy-on-write).

    Mapping the already-open file means the bytes parsed are the bytes that were hashed, even if the
    path is swapped in between. Copy-on-write gives torch writable views without touching the file.
    """
    try:
        reader = _PlainArrayReader(file, mode="c")  # type: ignore[arg-type]  # np.memmap takes a file
    except (ValueError, IndexError, KeyError, OverflowError, TypeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"not a readable GGUF file, truncated or corrupt ({exc})", path=path) from exc
    size = reader.data.size
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size or tensor.data.nbytes != tensor.n_bytes:
            raise ModelLoadError(
                f"file is truncated: tensor {tensor.name!r} needs bytes up to "
                f"{tensor.data_offset + tensor.n_bytes}, the file has {size}",
                path=path,
            )
    return reader


class GGUFMetadata:
    """Typed access to a GGUF file's key/value metadata; errors name the file and the key."""

    def __init__(self, reader: GGUFReader, path: Path) -> None:
        self.fields: dict[str, ReaderField] = dict(reader.fields)
        self.tensor_names = frozenset(tensor.name for tensor in reader.tensors)
        self.path = path

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def _field(self, key: str, kinds: frozenset[GGUFValueType], what: str) -> ReaderField:
        field = self.fields.get(key)
        if field is None:
            raise ModelLoadError(f"metadata key {key!r} is missing", path=self.path)
        if field.types[0] not in kinds or not field.data:
            raise ModelLoadError(
                f"metadata key {key!r} should be {what}, found {[t.name for t in field.types]}",
                path=self.path,
            )
        return field

    def string(self, key: str) -> str:
        field = self._field(key, frozenset({GGUFValueType.STRING}), "a string")
        return self._decode(key, field.parts[field.data[0]])

    def integer(self, key: str) -> int:
        field = self._field(key, _NUMBER_TYPES, "a number")
        value = field.parts[field.data[0]][0]
        if isinstance(value, np.floating):
            raise ModelLoadError(f"metadata key {key!r} should be an integer, found {value}", path=self.path)
        return int(value)

    def number(self, key: str) -> float:
        field = self._field(key, _NUMBER_TYPES, "a number")
        value = field.parts[field.data[0]][0]
        if isinstance(value, np.float32):
            # The shortest decimal that round-trips in float32: 1e-05 rather than 9.999999747378752e-06,
            # so a config read from GGUF equals the one it was converted from.
            return float(str(value))
        return float(value)

    def boolean(self, key: str) -> bool:
        field = self._field(key, frozenset({GGUFValueType.BOOL}), "a boolean")
        return bool(field.parts[field.data[0]][0])

    def strings(self, key: str) -> list[str]:
        field = self._array(key, GGUFValueType.STRING, "an array of strings")
        return [self._decode(key, field.parts[index]) for index in field.data]

    def numbers(self, key: str) -> npt.NDArray[Any]:
        field = self._array(key, None, "an array of numbers")
        if field.types[1] not in _NUMBER_TYPES:
            raise ModelLoadError(f"metadata key {key!r} should be an array of numbers", path=self.path)
        return np.concatenate([field.parts[index] for index in field.data])

    def get_string(self, key: str) -> str | None:
        return self.string(key) if key in self else None

    def get_integer(self, key: str) -> int | None:
        return self.integer(key) if key in self else None

    def get_number(self, key: str) -> float | None:
        return self.number(key) if key in self else None

    def get_boolean(self, key: str) -> bool | None:
        return self.boolean(key) if key in self else None

    def _array(self, key: str, item: GGUFValueType | None, what: str) -> ReaderField:
        field = self.fields.get(key)
        if field is None:
            raise ModelLoadError(f"metadata key {key!r} is missing", path=self.path)
        if field.types[0] != GGUFValueType.ARRAY:
            raise ModelLoadError(f"metadata key {key!r} should be {what}", path=self.path)
        if not field.data:
            raise ModelLoadError(f"metadata key {key!r} is an empty array", path=self.path)
        if item is not None and field.types[1:] != [item]:
            raise ModelLoadError(f"metadata key {key!r} should be {what}", path=self.path)
        return field

    def _decode(self, key: str, raw: npt.NDArray[Any]) -> str:
        try:
            return raw.tobytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelLoadError(f"metadata key {key!r} holds invalid UTF-8 ({exc})", path=self.path) from exc
