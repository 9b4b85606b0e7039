"""Storage `spaces`: the private Spaces bucket the registry nodes share, and its keys.

Buckets are managed through the S3-compatible Spaces API, which takes Spaces keys, not the API
token: the provider's `spaces_access_id`/`spaces_secret_key` ("The access key ID [secret key]
for Spaces API operations", pulumi-digitalocean provider.py). So the stack creates, with the
API token alone, a key for itself (`fullaccess`: a key scoped to a bucket cannot create it)
and an explicit provider configured with it; the user still sets only the token. The nodes get
a second key, scoped to this bucket by its grant (`readwrite`: objects only; "permission ...
read, readwrite, fullaccess", digitalocean_spaces_key reference, docs.digitalocean.com).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_digitalocean as digitalocean
import pulumi_random as random

from components.settings import BUCKET_SUFFIX_BYTES

# Parts of multipart uploads a client never finished (a push cut off) are deleted after a day.
ABORT_INCOMPLETE_UPLOADS_DAYS = 1


def spaces_endpoint(region: str) -> str:
    """The S3 endpoint of a Spaces region."""
    return f"https://{region}.digitaloceanspaces.com"


@dataclass
class ObjectStorageArgs:
    name_prefix: str
    bucket: str | None  # None: `bucket_prefix` plus random hex, kept by the stack
    bucket_prefix: str
    region: str
    # retainVolumeOnDestroy: keep the bucket, with the images, when the stack lets it go.
    retain_on_destroy: bool = False


class ObjectStorage(pulumi.ComponentResource):
    """The bucket (private, no versioning, incomplete multipart uploads aborted) and the
    nodes' key. `access_key` and `secret_key` (secret) are the nodes' key."""

    bucket: pulumi.Output[str]
    endpoint: str
    access_key: pulumi.Output[str]
    secret_key: pulumi.Output[str]

    def __init__(
        self, name: str, args: ObjectStorageArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("private-registry:index:ObjectStorage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        stack_key = digitalocean.SpacesKey(
            f"{name}-stack-key",
            name=f"{args.name_prefix}-stack",
            grants=[digitalocean.SpacesKeyGrantArgs(bucket="", permission="fullaccess")],
            opts=child,
        )
        # An explicit provider does not read the default one's `digitalocean:token`: pass it
        # on (when unset, the provider reads DIGITALOCEAN_TOKEN, as the default one does).
        spaces_provider = digitalocean.Provider(
            f"{name}-spaces",
            token=pulumi.Config("digitalocean").get_secret("token"),
            spaces_access_id=stack_key.access_key,
            spaces_secret_key=stack_key.secret_key,
            opts=child,
        )
        bucket_name: pulumi.Input[str]
        if args.bucket is not None:
            bucket_name = args.bucket
        else:
            # Bucket names are shared with every other Spaces customer: a fixed derived name
            # could be anyone's. The suffix is made once and kept, so the name never changes.
            suffix = random.RandomId(
                f"{name}-bucket-suffix", byte_length=BUCKET_SUFFIX_BYTES, opts=child
            )
            bucket_name = pulumi.Output.concat(args.bucket_prefix, "-", suffix.hex)
        bucket = digitalocean.SpacesBucket(
            f"{name}-bucket",
            name=bucket_name,
            region=args.region,
            acl="private",
            # The provider deletes a bucket that still holds objects only with force_destroy
            # ("Unless true, the bucket will only be destroyed if empty",
            # digitalocean/spaces/resource_spaces_bucket.go): without it `pulumi destroy` stops
            # at BucketNotEmpty once a single image was pushed. Retained, it is never deleted.
            force_destroy=not args.retain_on_destroy,
            versioning=digitalocean.SpacesBucketVersioningArgs(enabled=False),
            lifecycle_rules=[
                digitalocean.SpacesBucketLifecycleRuleArgs(
                    enabled=True,
                    abort_incomplete_multipart_upload_days=ABORT_INCOMPLETE_UPLOADS_DAYS,
                )
            ],
            opts=pulumi.ResourceOptions(
                parent=self, provider=spaces_provider, retain_on_delete=args.retain_on_destroy
            ),
        )
        nodes_key = digitalocean.SpacesKey(
            f"{name}-registry-key",
            name=f"{args.name_prefix}-registry",
            grants=[digitalocean.SpacesKeyGrantArgs(bucket=bucket.name, permission="readwrite")],
            opts=child,
        )

        self.bucket = bucket.name
        self.endpoint = spaces_endpoint(args.region)
        self.access_key = nodes_key.access_key
        self.secret_key = pulumi.Output.secret(nodes_key.secret_key)
        self.register_outputs({"bucket": self.bucket, "endpoint": self.endpoint})
