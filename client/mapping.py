"""Feature mappings: which data point attribute each vectorizer turns into which batch tensor."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import BatchError

__all__ = [
    "BatchFeatureMapping",
    "ConfigBatchFeatureMapping",
    "FieldFeatureMapping",
    "ManagerFeatureMapping",
]

_ATTR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class FieldFeatureMapping:
    """Meta data describing an attribute of the data point.

    Attributes:
        attr: the attribute name of the batch tensor (and, by default, of the data point).
        feature_id: the ``feature_id`` of the vectorizer that encodes it.
        is_agg: if ``True``, the values of all data points are vectorized at once (e.g. padded to
            the longest); otherwise each data point is vectorized and the results are stacked.
        attr_access: the attribute on the data point to read, when it differs from ``attr``.
        is_label: whether the field is a label; label fields are skipped for prediction batches.
    """

    attr: str
    feature_id: str
    is_agg: bool = False
    attr_access: str | None = None
    is_label: bool = False

    def __post_init__(self) -> None:
        if not _ATTR_NAME.match(self.attr):
            raise BatchError(f"attribute name {self.attr!r} is not a Python identifier")

    @property
    def attribute_accessor(self) -> str:
        """The attribute name on the data point: ``attr_access`` if set, otherwise ``attr``."""
        return self.attr if self.attr_access is None else self.attr_access

    def to_dict(self) -> dict[str, Any]:
        """Return the mapping as JSON-able data."""
        return {
            "attr": self.attr,
            "feature_id": self.feature_id,
            "is_agg": self.is_agg,
            "attr_access": self.attr_access,
            "is_label": self.is_label,
        }


@dataclass(frozen=True)
class ManagerFeatureMapping:
    """The fields vectorized by one vectorizer manager.

    Attributes:
        vectorizer_manager_name: the name of the :class:`FeatureVectorizerManager`.
        fields: the fields of the data point that manager vectorizes.
    """

    vectorizer_manager_name: str
    fields: Sequence[FieldFeatureMapping]

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))

    def to_dict(self) -> dict[str, Any]:
        """Return the mapping as JSON-able data."""
        return {
            "vectorizer_manager_name": self.vectorizer_manager_name,
            "fields": [f.to_dict() for f in self.fields],
        }


@dataclass(frozen=True)
class BatchFeatureMapping:
    """The meta data used to encode and decode each feature into tensors.

    Example (the reference's iris mapping)::

        MAPPINGS = BatchFeatureMapping(
            "label",
            [ManagerFeatureMapping(
                "iris_vectorizer_manager",
                (FieldFeatureMapping("label", "ilabel", True),
                 FieldFeatureMapping("flower_dims", "iseries")))])

    Attributes:
        label_attribute_name: the attribute holding the label (``None`` for unlabelled data); a
            stash refuses a name that no field maps.
        manager_mappings: the manager level mappings.
    """

    label_attribute_name: str | None = "label"
    manager_mappings: Sequence[ManagerFeatureMapping] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "manager_mappings", tuple(self.manager_mappings))
        seen: set[str] = set()
        for fld in self.fields:
            if fld.attr in seen:
                raise BatchError(f"attribute {fld.attr!r} is mapped more than once")
            seen.add(fld.attr)

    @property
    def fields(self) -> tuple[FieldFeatureMapping, ...]:
        """Every field of every manager mapping, in order."""
        return tuple(f for m in self.manager_mappings for f in m.fields)

    @property
    def attributes(self) -> tuple[str, ...]:
        """The attribute names of every field, in order."""
        return tuple(f.attr for f in self.fields)

    @property
    def dropped_attributes(self) -> frozenset[str]:
        """Attributes a field edit removed: none here (see :class:`ConfigBatchFeatureMapping`)."""
        return frozenset()

    def field(self, attr: str) -> FieldFeatureMapping:
        """Return the field mapping of attribute ``attr``."""
        for fld in self.fields:
            if fld.attr == attr:
                return fld
        raise BatchError(f"no field mapping for attribute {attr!r}")

    def is_label_field(self, fld: FieldFeatureMapping) -> bool:
        """Whether ``fld`` is a label (its own flag or the label attribute)."""
        return fld.is_label or fld.attr == self.label_attribute_name

    @property
    def label_field(self) -> FieldFeatureMapping | None:
        """The field mapping of :attr:`label_attribute_name`, if it is mapped."""
        found = [f for f in self.fields if f.attr == self.label_attribute_name]
        return found[0] if found else None

    @property
    def label_feature_id(self) -> str | None:
        """The feature id of the vectorizer that transforms the label."""
        label = self.label_field
        return None if label is None else label.feature_id

    @property
    def label_vectorizer_manager(self) -> ManagerFeatureMapping | None:
        """The manager mapping whose vectorizer manager vectorizes the label.

        The reference resolves the live manager through its config factory; here the live
        :class:`FeatureVectorizerManager` is ``BatchStash.label_vectorizer_manager``.
        """
        for mng in self.manager_mappings:
            if any(f.attr == self.label_attribute_name for f in mng.fields):
                return mng
        return None

    def to_dict(self) -> dict[str, Any]:
        """Return the mapping as JSON-able data (the resolved fields, no edit lists)."""
        return {
            "label_attribute_name": self.label_attribute_name,
            "manager_mappings": [m.to_dict() for m in self.manager_mappings],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchFeatureMapping:
        """Rebuild a mapping from :meth:`to_dict` data."""
        managers = tuple(
            ManagerFeatureMapping(
                m["vectorizer_manager_name"],
                tuple(FieldFeatureMapping(**f) for f in m["fields"]),
            )
            for m in data["manager_mappings"]
        )
        return BatchFeatureMapping(data["label_attribute_name"], managers)


def _edit(
    managers: Iterable[ManagerFeatureMapping], keep: set[str] | None, remove: set[str]
) -> tuple[ManagerFeatureMapping, ...]:
    edited = []
    for mng in managers:
        fields = tuple(
            f for f in mng.fields if (keep is None or f.attr in keep) and f.attr not in remove
        )
        if fields:
            edited.append(replace(mng, fields=fields))
    return tuple(edited)


@dataclass(frozen=True)
class ConfigBatchFeatureMapping(BatchFeatureMapping):
    """A mapping refined by adding mappings and keeping or removing fields, applied at creation.

    Attributes:
        batch_feature_mapping_adds: mappings whose manager mappings are appended.
        field_remove: attribute names to drop.
        field_keep: if given, only these attribute names are kept.
        dropped_attributes: the attributes the edits dropped (set on creation): a stash prunes
            them from its attribute groups, as the reference does.
    """

    batch_feature_mapping_adds: tuple[BatchFeatureMapping, ...] = ()
    field_remove: frozenset[str] = field(default_factory=frozenset)
    field_keep: frozenset[str] | None = None
    dropped_attributes: frozenset[str] = field(
        init=False, default=frozenset(), repr=False, compare=False
    )

    def __post_init__(self) -> None:
        managers = list(self.manager_mappings)
        for add in self.batch_feature_mapping_adds:
            managers.extend(add.manager_mappings)
        keep = None if self.field_keep is None else set(self.field_keep)
        known = {f.attr for m in managers for f in m.fields}
        unknown = (set(keep or ()) | set(self.field_remove)) - known
        if unknown:
            raise BatchError(f"field_keep/field_remove name unknown fields: {sorted(unknown)}")
        label = self.label_attribute_name
        if label is not None and label not in known:  # checked before an edit may remove it
            raise BatchError(
                f"label attribute {label!r} is not mapped; mapped attributes: "
                f"{', '.join(repr(f.attr) for m in managers for f in m.fields) or 'none'} "
                "(label_attribute_name=None for unlabelled data)"
            )
        edited = _edit(managers, keep, set(self.field_remove))
        object.__setattr__(self, "manager_mappings", edited)
        kept = {f.attr for m in edited for f in m.fields}
        object.__setattr__(self, "dropped_attributes", frozenset(known - kept))
        super().__post_init__()
