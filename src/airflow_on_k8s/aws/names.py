"""Names of AWS resources derived from the cluster name, kept within the limits AWS enforces.

`clusterName` may be 30 characters, but some names built from it have much tighter limits than the cluster's:
an S3 `bucket_prefix` takes at most 37 characters and an RDS `identifier_prefix` 37 as well (the provider
appends a 26-character unique suffix to reach the 63 both services allow). A derived name that fits is used
as is, so the names of existing stacks never change; one that does not keeps the start of the cluster name and
a short hash of all of it, so two long cluster names still get distinct names.
"""

from __future__ import annotations

import hashlib
import re

# pulumi_aws 7.51.1, s3/bucket.py `bucket_prefix`: "Must be lowercase and less than or equal to 37 characters".
S3_BUCKET_PREFIX_MAX = 37
# RDS identifiers are at most 63 characters; the provider appends a 26-character unique suffix to a prefix
# (terraform-provider-aws `id.PrefixedUniqueId`), which leaves 37.
RDS_IDENTIFIER_PREFIX_MAX = 37

_HASH_LENGTH = 6


def derived_name(cluster_name: str, suffix: str, limit: int, single_hyphens: bool = False) -> str:
    """`cluster_name + suffix` within `limit` characters.

    `single_hyphens` collapses runs of hyphens, for names that may not contain two in a row (RDS identifiers),
    which a valid cluster name such as `a--b` would otherwise produce.
    """

    def tidy(name: str) -> str:
        return re.sub(r"-{2,}", "-", name) if single_hyphens else name

    name = tidy(cluster_name + suffix)
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(cluster_name.encode()).hexdigest()[:_HASH_LENGTH]
    room = limit - len(suffix) - len(digest) - 1
    if room < 1:
        raise ValueError(f"suffix {suffix!r} leaves no room for the cluster name within {limit} characters")
    return tidy(f"{cluster_name[:room].rstrip('-')}-{digest}{suffix}")
