"""Data formats by name. Adding one: a new file with a `DataFormat` subclass, plus one line in FORMATS."""

from lightning_ft.data.formats.base import IGNORE_INDEX, DataFormat, EncodeContext, TokenRules
from lightning_ft.data.formats.chat import Chat
from lightning_ft.data.formats.classification import Classification
from lightning_ft.data.formats.instruction import Instruction
from lightning_ft.data.formats.preference import Preference
from lightning_ft.data.formats.text import Text
from lightning_ft.data.formats.unpaired import Unpaired
from lightning_ft.errors import UserError

FORMATS: dict[str, type[DataFormat]] = {
    "text": Text,
    "instruction": Instruction,
    "chat": Chat,
    "classification": Classification,
    "preference": Preference,
    "unpaired": Unpaired,
}


def resolve_format(format: str | DataFormat) -> DataFormat:
    """A format object from its name (with default settings) or as given."""
    if isinstance(format, DataFormat):
        return format
    if format not in FORMATS:
        raise UserError(f"--data.format: unknown format '{format}' (choose from {', '.join(FORMATS)})")
    return FORMATS[format]()


__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "Chat",
    "Classification",
    "DataFormat",
    "EncodeContext",
    "Instruction",
    "Preference",
    "Text",
    "TokenRules",
    "Unpaired",
    "resolve_format",
]
