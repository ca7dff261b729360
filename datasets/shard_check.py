"""Which records of a TFRecord shard can be read, checked before a run reads them.

A shard cut short (a copy interrupted, a disk that filled up, a sync still running) makes
``TFRecordDataset`` fail with ``DataLossError: truncated record at 114494`` when the reader gets
there, which in training can be hours in, and without the file's name. So the trainer and the
evaluator walk every shard's record framing before they start (a TFRecord is a chain of
``length (uint64), masked CRC-32C of the length (uint32), data, masked CRC-32C of the data``):
one small read per record, milliseconds per shard. A shard whose chain ends early or breaks is
named in a warning with the records it still holds, and the run reads exactly those (nothing is
lost but what is damaged, and the count says how much). Damage inside a record's data is found
by TensorFlow when it reads the record (the data CRC); the pipeline then skips the rest of that
shard for the epoch with TensorFlow's warning, and ``python -m datasets.shard_check
--dataset_dir=...`` reads every record to name the shard.
"""

import dataclasses
import os
import struct
import sys

from absl import flags

import command_line

_HEADER = 12  # uint64 length + uint32 masked CRC of the length
_FOOTER = 4  # uint32 masked CRC of the data


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    """CRC-32C (Castagnoli), as TFRecord uses it."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data):
    """TFRecord's masked CRC: rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class ShardScan:
    path: str
    records: int  # complete records before the first problem (all of them when there is none)
    size: int
    problem: str | None  # why the chain breaks, with the byte offset; None for a sound shard

    def describe(self):
        return f"{self.path}: {self.problem}; the {self.records} record(s) before it are usable"


def scan_shard(path):
    """Walks the record framing of ``path``; returns a :class:`ShardScan` (raises OSError if unreadable)."""
    size = os.path.getsize(path)
    records = offset = 0
    with open(path, "rb") as stream:
        while offset < size:
            if offset + _HEADER > size:
                return ShardScan(path, records, size, f"cut short at byte {size}: record {records + 1} has "
                                                     f"only {size - offset} of its 12 header bytes")
            stream.seek(offset)
            header = stream.read(_HEADER)
            length_bytes = header[:8]
            if struct.unpack("<I", header[8:])[0] != masked_crc32c(length_bytes):
                return ShardScan(path, records, size, f"record {records + 1} at byte {offset} has a damaged header "
                                                     "(length checksum mismatch)")
            length = struct.unpack("<Q", length_bytes)[0]
            end = offset + _HEADER + length + _FOOTER
            if end > size:
                return ShardScan(path, records, size, f"cut short at byte {size}: record {records + 1} at byte "
                                                     f"{offset} needs {end - offset} bytes")
            offset = end
            records += 1
    return ShardScan(path, records, size, None)


def read_every_record(path):
    """``(records read, error or None)``: reads ``path`` with TensorFlow, which checks every record's data
    checksum; the error's first line names what broke."""
    import tensorflow as tf

    count = 0
    try:
        for _ in tf.compat.v1.io.tf_record_iterator(path):
            count += 1
    except tf.errors.OpError as error:
        return count, error.message.strip().splitlines()[0]
    return count, None


def define_flags(flag_values):
    """Defines the check's flags on ``flag_values`` (a fresh :class:`absl.flags.FlagValues`); returns it."""
    flags.DEFINE_string("dataset_dir", None, "A converted dataset (tf_convert_data.py output).", required=True,
                        flag_values=flag_values)
    return flag_values


def main(argv=None):
    """``python -m datasets.shard_check --dataset_dir=D``: reads every record of every shard of a
    converted dataset and names each damaged shard; exit status 4 when one is."""
    args = command_line.parse_flags(define_flags(flags.FlagValues()), argv, main.__doc__,
                                    program="python -m datasets.shard_check")
    from datasets import dataset_factory

    try:
        info = dataset_factory.read_dataset_info(args.dataset_dir)
    except dataset_factory.DatasetError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    damaged = 0
    for split_name, split in sorted(info.get("splits", {}).items()):
        found = 0
        for name in split["files"]:
            path = os.path.join(args.dataset_dir, name)
            if not os.path.exists(path):
                print(f"{path}: missing", file=sys.stderr)
                damaged += 1
                continue
            count, error = read_every_record(path)
            found += count
            if error:
                damaged += 1
                print(f"{path}: damaged after record {count}: {error}", file=sys.stderr)
        print(f"{split_name}: {found} of {split['num_images']} records readable")
    if damaged:
        print(f"{damaged} damaged or missing shard(s): re-run tf_convert_data.py to write them again", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
