"""The layout helper's fixed-width ASCII text fields (``layout.text``)."""

from __future__ import annotations

from measure.record import fields, record

import pytest

from measure import layout
from measure.errors import LayoutError


@layout.struct(size=12, spec="test: a name and a decimal number, as in an ar header")
@record
class Label(layout.Struct):
    name: str = layout.text(0, 8)
    count: str = layout.text(8, 4)


def test_text_is_space_padded_on_writing_and_stripped_on_parsing():
    data = Label(name="ab", count="42").to_bytes()
    assert data == b"ab      42  "
    assert Label.from_bytes(data) == Label(name="ab", count="42")
    assert Label().to_bytes() == b" " * 12


def test_text_keeps_leading_spaces_and_other_padding():
    assert Label.from_bytes(b"  x/\x00   ` \n ") == Label(name="  x/\x00", count="` \n")


def test_text_refuses_bytes_outside_ascii_naming_the_offset():
    with pytest.raises(LayoutError, match=r"Label.count: byte at offset 0x9 is 0xff, not ASCII text"):
        Label.from_bytes(b"name    1\xff  ")
    with pytest.raises(LayoutError, match=r"hdr.name: byte at offset 0x12 is 0xe9, not ASCII text"):
        Label.from_bytes(b"ab\xe9     1   ", base=0x10, what="hdr")


def test_text_refuses_values_that_do_not_fit_or_are_not_ascii():
    with pytest.raises(LayoutError, match=r"Label.count = '12345' does not fit in 4 character\(s\) at offset 0x8"):
        Label(count="12345").to_bytes()
    with pytest.raises(LayoutError, match=r"Label.name = 'é' at offset 0x0 is not ASCII"):
        Label(name="é").to_bytes()


def test_every_declared_structure_compiles():
    """Layouts are checked on first use; this checks every one the project declares, used or not."""
    import importlib
    import pkgutil

    import blindbox
    import builder
    import measure
    for pkg in (measure, blindbox, builder):
        for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if mod.name.endswith("__main__"):
                continue
            importlib.import_module(mod.name)
    classes = layout.declared()
    names = {c.__name__ for c in classes}
    assert {"PageInfo", "SaveArea", "HashTable", "MetadataSection"} <= names, names
    for cls in classes:
        layout.check(cls)
        assert cls.offset_of(fields(cls)[0].name) >= 0


def test_a_malformed_layout_is_refused_on_first_use():
    @layout.struct(size=4, spec="test: fields beyond the declared size")
    @record
    class TooBig(layout.Struct):
        a: int = layout.u64(0)

    with pytest.raises(TypeError, match="TooBig: fields end at 0x8, beyond the declared size 0x4"):
        TooBig().to_bytes()
    with pytest.raises(TypeError, match="beyond the declared size"):
        layout.check(TooBig)
