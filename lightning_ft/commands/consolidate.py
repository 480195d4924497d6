"""`lightning-ft consolidate`: a sharded checkpoint folder (FSDP, FSDP2, DeepSpeed) as one checkpoint file.

The file is what --ckpt_path, eval, export and load_from_checkpoint read; written atomically, never over an
existing file.
"""

from __future__ import annotations

from pathlib import Path

from lightning_ft.commands.parsing import command_parser
from lightning_ft.errors import UserError


def parser():
    parser = command_parser("consolidate", __doc__)
    parser.add_argument("folder", type=str, help="the sharded checkpoint folder")
    parser.add_argument("output", type=str, help="the checkpoint file to write (must not exist)")
    return parser


def main(argv: list[str]) -> None:
    """lightning-ft consolidate CKPT_DIR OUT"""
    args = parser().parse_args(argv)
    from lightning_ft.distributed.consolidate import consolidate

    folder, output = Path(args.folder), Path(args.output)
    if output.exists():
        raise UserError(f"consolidate: {output} exists; choose another OUT (nothing is overwritten)")
    output.parent.mkdir(parents=True, exist_ok=True)
    kind = consolidate(folder, output)
    print(f"consolidated {kind} checkpoint {folder} -> {output}")
