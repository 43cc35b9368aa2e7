"""Feature mappings: fields, managers, label lookups and configuration edits."""

from __future__ import annotations

import json
import pickle

import pytest

from batchstash.client import (
    BatchError,
    BatchFeatureMapping,
    ConfigBatchFeatureMapping,
    FieldFeatureMapping,
    ManagerFeatureMapping,
)

IRIS = BatchFeatureMapping(
    "label",
    [
        ManagerFeatureMapping(
            "iris_vectorizer_manager",
            (
                FieldFeatureMapping("label", "ilabel", True),
                FieldFeatureMapping("flower_dims", "iseries"),
            ),
        )
    ],
)
TEXT = ManagerFeatureMapping(
    "text_manager",
    (
        FieldFeatureMapping("tokens", "token_ids", is_agg=True),
        FieldFeatureMapping("lengths", "token_lengths", attr_access="tokens"),
    ),
)


@pytest.mark.parametrize(
    ("fld", "accessor"),
    [
        (FieldFeatureMapping("tokens", "ids"), "tokens"),
        (FieldFeatureMapping("lengths", "lens", attr_access="tokens"), "tokens"),
        (FieldFeatureMapping("x", "f", attr_access="row_x"), "row_x"),
    ],
)
def test_attribute_accessor(fld, accessor):
    assert fld.attribute_accessor == accessor


def test_reference_positional_arguments():
    fld = FieldFeatureMapping("label", "ilabel", True)
    assert (fld.attr, fld.feature_id, fld.is_agg, fld.attr_access, fld.is_label) == (
        "label",
        "ilabel",
        True,
        None,
        False,
    )


@pytest.mark.parametrize("name", ["1abc", "a-b", "", "a b", "x" * 65, "../x"])
def test_attribute_names_must_be_identifiers(name):
    with pytest.raises(BatchError, match="is not a Python identifier"):
        FieldFeatureMapping(name, "f")


def test_fields_and_attributes():
    mapping = BatchFeatureMapping("label", [*IRIS.manager_mappings, TEXT])
    assert mapping.attributes == ("label", "flower_dims", "tokens", "lengths")
    assert mapping.field("lengths").attr_access == "tokens"
    with pytest.raises(BatchError, match="no field mapping for attribute 'nope'"):
        mapping.field("nope")


def test_label_feature_id_and_manager():
    assert IRIS.label_feature_id == "ilabel"
    assert IRIS.label_vectorizer_manager.vectorizer_manager_name == "iris_vectorizer_manager"
    assert IRIS.label_field.attr == "label"
    unlabelled = BatchFeatureMapping(None, [TEXT])
    assert unlabelled.label_feature_id is None
    assert unlabelled.label_vectorizer_manager is None
    other = BatchFeatureMapping("flower_dims", IRIS.manager_mappings)
    assert other.label_feature_id == "iseries"


def test_is_label_field():
    mapping = BatchFeatureMapping(
        "label",
        [
            ManagerFeatureMapping(
                "m",
                (
                    FieldFeatureMapping("label", "a"),
                    FieldFeatureMapping("label2", "b", is_label=True),
                    FieldFeatureMapping("x", "c"),
                ),
            )
        ],
    )
    assert [mapping.is_label_field(f) for f in mapping.fields] == [True, True, False]


def test_duplicate_attribute_is_an_error():
    dup = ManagerFeatureMapping("other", (FieldFeatureMapping("flower_dims", "x"),))
    with pytest.raises(BatchError, match="attribute 'flower_dims' is mapped more than once"):
        BatchFeatureMapping("label", [*IRIS.manager_mappings, dup])


def test_to_dict_round_trip():
    mapping = BatchFeatureMapping("label", [*IRIS.manager_mappings, TEXT])
    data = json.loads(json.dumps(mapping.to_dict()))
    assert data["manager_mappings"][1]["fields"][1] == {
        "attr": "lengths",
        "feature_id": "token_lengths",
        "is_agg": False,
        "attr_access": "tokens",
        "is_label": False,
    }
    assert BatchFeatureMapping.from_dict(data) == mapping


@pytest.mark.parametrize(
    ("kwargs", "attributes", "managers"),
    [
        ({}, ("label", "flower_dims"), ["iris_vectorizer_manager"]),
        (
            {"batch_feature_mapping_adds": (BatchFeatureMapping(None, [TEXT]),)},
            ("label", "flower_dims", "tokens", "lengths"),
            ["iris_vectorizer_manager", "text_manager"],
        ),
        (
            {
                "batch_feature_mapping_adds": (BatchFeatureMapping(None, [TEXT]),),
                "field_remove": frozenset({"lengths", "flower_dims"}),
            },
            ("label", "tokens"),
            ["iris_vectorizer_manager", "text_manager"],
        ),
        (
            {
                "batch_feature_mapping_adds": (BatchFeatureMapping(None, [TEXT]),),
                "field_keep": frozenset({"tokens", "lengths"}),
            },
            ("tokens", "lengths"),
            ["text_manager"],  # a manager left without fields is dropped
        ),
        (
            {
                "field_keep": frozenset({"label", "flower_dims"}),
                "field_remove": frozenset({"label"}),
            },
            ("flower_dims",),
            ["iris_vectorizer_manager"],
        ),
    ],
    ids=["plain", "add", "add-remove", "add-keep", "keep-remove"],
)
def test_config_mapping_edits(kwargs, attributes, managers):
    mapping = ConfigBatchFeatureMapping("label", IRIS.manager_mappings, **kwargs)
    assert mapping.attributes == attributes
    assert [m.vectorizer_manager_name for m in mapping.manager_mappings] == managers
    # the edited mapping serializes as a plain mapping of the resolved fields
    assert BatchFeatureMapping.from_dict(mapping.to_dict()).attributes == attributes


@pytest.mark.parametrize(
    ("kwargs", "dropped"),
    [
        ({}, set()),
        ({"field_remove": frozenset({"flower_dims"})}, {"flower_dims"}),
        (
            {
                "batch_feature_mapping_adds": (BatchFeatureMapping(None, [TEXT]),),
                "field_keep": frozenset({"tokens"}),
            },
            {"label", "flower_dims", "lengths"},
        ),
    ],
    ids=["plain", "remove", "add-keep"],
)
def test_config_mapping_records_what_its_edits_dropped(kwargs, dropped):
    mapping = ConfigBatchFeatureMapping("label", IRIS.manager_mappings, **kwargs)
    assert mapping.dropped_attributes == dropped
    assert not dropped & set(mapping.attributes)
    assert pickle.loads(pickle.dumps(mapping)).dropped_attributes == dropped
    assert mapping == ConfigBatchFeatureMapping("label", IRIS.manager_mappings, **kwargs)
    assert "dropped_attributes" not in mapping.to_dict() and "dropped" not in repr(mapping)
    assert IRIS.dropped_attributes == frozenset()


@pytest.mark.parametrize("edit", ["field_keep", "field_remove"])
def test_config_mapping_unknown_names(edit):
    with pytest.raises(BatchError, match=r"unknown fields: \['nope'\]"):
        ConfigBatchFeatureMapping("label", IRIS.manager_mappings, **{edit: frozenset({"nope"})})


def test_config_mapping_duplicate_after_add():
    with pytest.raises(BatchError, match="mapped more than once"):
        ConfigBatchFeatureMapping(
            "label", IRIS.manager_mappings, batch_feature_mapping_adds=(IRIS,)
        )
