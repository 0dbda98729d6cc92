import polars as pl
import pytest

from features.data.categories import check, guess, one_path, shared_root
from features.data.validate import SchemaError


def test_one_path_keeps_the_deepest_path_of_a_list_and_blanks_as_blanks():
    col = pl.Series("category", ["A > B, A", "A, A > C > D", None, " , ", "X", "P > Q, R > S"])
    assert one_path(col, None, ",").to_list() == ["A > B", "A > C > D", None, None, "X", "P > Q"]  # a tie: the first
    assert one_path(pl.Series("c", ["a.b", "a..c", None]), ".", None).to_list() == ["a > b", "a > c", None]
    same = pl.Series("c", ["Home > Kitchen", None])
    assert one_path(same, None, None) is same  # nothing set: untouched


def test_guess_needs_a_tree_not_a_phrase():
    assert guess(pl.Series(["electronics.smartphone", "electronics.audio", "kids.toys"])) == {"category_separator": "."}
    assert guess(pl.Series(["Home > Kitchen", "Home > Garden", "Toys"])) == {}  # the contract's form already
    assert guess(pl.Series(["Home>Kitchen", "Home>Garden", "Toys"])) == {"category_separator": ">"}
    assert guess(pl.Series(["Dr. Martens", "Mr. Men", "Mugs"])) == {}  # no root shared: names with a dot
    assert guess(pl.Series(["Vol. 2", "Vol. 3", "Mugs"])) == {}  # a number is no level
    assert guess(pl.Series(["Gifts, Kitchen", "Gifts", "Kitchen", "Toys"])) == {"category_list_separator": ","}
    assert guess(pl.Series(["Bags, Backpacks", "Shoes, Boots", "Toys"])) == {}  # names alone nowhere: one name each


def test_a_root_every_path_shares_is_named():
    magento = pl.Series(["Default Category/Gear", "Default Category/Men/Tops", "Default Category/Gear/Bags"])
    assert shared_root(magento, {"category_separator": "/"}) == "Default Category"
    assert shared_root(pl.Series(["Home > Kitchen", "Home > Garden", "Toys"]), {}) is None  # Toys has no root above it
    assert shared_root(pl.Series(["Home > Kitchen", "Home > Garden"]), {}) is None  # too small a sample to say


def test_a_shared_root_is_dropped_where_named_and_a_path_of_the_root_alone_is_no_category():
    magento = pl.Series("c", ["Default Category/Gear,Default Category/Gear/Bags", "Default Category", "Other/X",
                              None, "Default Category/Default Category/Y"])
    assert one_path(magento, "/", ",", "Default Category").to_list() == ["Gear > Bags", None, "Other > X", None,
                                                                          "Default Category > Y"]  # only the first level
    assert one_path(pl.Series("c", ["Default Category > Gear", "Gear"]), None, None, " Default Category ").to_list() == [
        "Gear", "Gear"]  # already " > " paths; an item already without it is left alone


def test_category_settings_name_the_field_when_they_cannot_apply():
    with pytest.raises(SchemaError, match=r"mapping.items.category_root: ' '; a non-blank name"):
        check("mapping.items", "items", None, None, " ")
    with pytest.raises(SchemaError, match=r"mapping.events.category_root: 'Default Category'"):
        check("mapping.events", "events", None, None, "Default Category")
    with pytest.raises(SchemaError, match=r"category_list_separator: '/'.*other than the path separator"):
        check("mapping.items", "items", "/", "/", None)
    check("mapping.items", "items", "/", ",", "Default Category")  # all fine
