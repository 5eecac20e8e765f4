"""Google Compute Engine through google-cloud-compute: an instance with the cloud-config as
metadata `user-data` (the lab's SSH key as `ssh-keys`), labels, a per-run SSH firewall
rule, the serial port as console log.

    GOOGLE_APPLICATION_CREDENTIALS=sa.json ROSLAB_SSH_SOURCE=203.0.113.7/32 \\
        pytest scenarios/ --platform gce --image gce:projects/P/global/images/rancheros-v1-5-8
    ... --image gce:gs://BUCKET/rancheros-gce.tar.gz     # the release file, already uploaded
    ... --image ./rancheros-gce.tar.gz --platform-option bucket=BUCKET  # uploaded per run

Credentials: Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS naming a
service-account key file, or `gcloud auth application-default login`); the project is
GOOGLE_CLOUD_PROJECT or the credentials' own. Settings (a `--platform-option KEY=VALUE` or
`--instance-type` first, else the variable): zone / ROSLAB_GCE_ZONE (us-central1-a),
instance_type / ROSLAB_GCE_MACHINE_TYPE (e2-small), network / ROSLAB_GCE_NETWORK
(global/networks/default), ssh_from / ROSLAB_SSH_SOURCE (the runner's address, required);
ROSLAB_GCE_ENDPOINT (a private API endpoint, e.g. Private Service Connect).

A local release tarball is uploaded with google-cloud-storage to the bucket named by the
`bucket` option or ROSLAB_GCE_BUCKET (ROSLAB_GCS_ENDPOINT: Cloud Storage's private
endpoint), as an object of its own per run (`roslab-...tar.gz`, the marks as object
metadata); the image is made from it, and both are deleted when the machine is.
`roslab gc --platform gce` sweeps that bucket too when ROSLAB_GCE_BUCKET is set.

Labels: GCE label values are lowercase `[a-z0-9_-]`, at most 63 characters. The expiry is
the same epoch-seconds integer as everywhere (digits only, so valid as it is); the run id
is lowercased with anything else turned into `-`. Firewall rules take no labels: their
marks are JSON in the rule's description, and their names start with `roslab-`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar

from drivers.cloud import (
    Candidate,
    CloudDriver,
    cloud_capabilities,
    epoch,
    import_sdk,
    resource_name,
    ssh_source,
    sweep,
    wait_for,
)
from lab import gc
from lab.cloudconfig import gce_ssh_keys
from lab.driver import Rehearsal
from lab.errors import ConfigError, ImageError
from lab.images import CLOUD, GCE_TARBALL, Image
from lab.redact import keep_secret

CREDENTIALS_HINT = ("set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file (or run "
                    "`gcloud auth application-default login`) and GOOGLE_CLOUD_PROJECT")
SERIAL_PORT = 1
BUCKET_ENV = "ROSLAB_GCE_BUCKET"
STORAGE_ENDPOINT_ENV = "ROSLAB_GCS_ENDPOINT"
SCOPES = ["https://www.googleapis.com/auth/compute",
          "https://www.googleapis.com/auth/devstorage.read_write"]  # uploads, gc of objects
OBJECT_PREFIX = "roslab-"  # every object the driver uploads (resource_name's start)


def label_value(text: str) -> str:
    """A GCE label value: lowercase letters, digits, `_` and `-`, at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]


def _keep_key_file_secret(path: str | None) -> None:
    """A service-account key file's private key never reaches evidence (line by line, as
    a PEM block is logged)."""
    if not path:
        return
    with contextlib.suppress(OSError, ValueError):
        key = json.loads(Path(path).read_text()).get("private_key", "")
        for line in key.splitlines():
            if "PRIVATE KEY" not in line:
                keep_secret(line, "GCE service-account key")


class GceDriver(CloudDriver):
    name = "gce"
    delivers_instance_keys = True  # the ssh-keys metadata
    sdk_module = "google.cloud.compute_v1"
    sdk_package = "google-cloud-compute"
    capabilities = cloud_capabilities("gce", image_kinds=(CLOUD, GCE_TARBALL))
    has_console_log = True
    file_secrets = ("GOOGLE_APPLICATION_CREDENTIALS",)  # a service-account key file
    running_states: ClassVar[tuple[str, ...]] = ("RUNNING",)
    failed_states: ClassVar[tuple[str, ...]] = ("TERMINATED", "SUSPENDED")

    def __init__(self) -> None:
        super().__init__()
        self.zone = ""

    # credentials and clients -------------------------------------------------------------

    @classmethod
    def _credentials(cls) -> tuple[Any, str]:
        cls.sdk()
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            creds, project = google.auth.default(scopes=SCOPES)
        except DefaultCredentialsError as exc:
            raise ConfigError(f"platform gce: no credentials ({exc}); {CREDENTIALS_HINT}") \
                from None
        _keep_key_file_secret(os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"))
        project = os.environ.get("GOOGLE_CLOUD_PROJECT") or project
        if not project:
            raise ConfigError(f"platform gce: no project; {CREDENTIALS_HINT}")
        return creds, project

    @classmethod
    def check_credentials(cls, options: dict[str, Any]) -> None:
        cls._credentials()

    @classmethod
    def _connect(cls) -> tuple[dict[str, Any], str]:
        compute = cls.sdk()
        creds, project = cls._credentials()
        endpoint = os.environ.get("ROSLAB_GCE_ENDPOINT")
        opts = {"api_endpoint": endpoint} if endpoint else None
        clients = {kind: getattr(compute, f"{kind}Client")(
            credentials=creds, transport="rest", client_options=opts)
            for kind in ("Instances", "Images", "Firewalls")}
        return clients, project

    @classmethod
    def _storage(cls) -> Any:
        """A Cloud Storage client (google-cloud-storage, imported only for uploads and gc of
        uploaded objects) with the same credentials and project."""
        storage = import_sdk("google.cloud.storage", "google-cloud-storage", cls.name)
        creds, project = cls._credentials()
        endpoint = os.environ.get(STORAGE_ENDPOINT_ENV)
        return storage.Client(project=project, credentials=creds,
                              client_options={"api_endpoint": endpoint} if endpoint else None)

    def client(self, kind: str) -> Any:
        return self.api[0][kind]

    @property
    def project(self) -> str:
        return self.api[1]

    # launch ------------------------------------------------------------------------------

    def prepare(self, spec: Any) -> None:
        super().prepare(spec)
        if spec.image.kind == GCE_TARBALL:  # uploaded at start: check what that needs now
            self._bucket()
            import_sdk("google.cloud.storage", "google-cloud-storage", self.name)

    def _bucket(self) -> str:
        bucket = self.option("bucket", BUCKET_ENV)
        if not bucket:
            assert self.spec is not None
            raise ConfigError(f"platform gce: {self.spec.image.path} is uploaded to a Cloud "
                              "Storage bucket first, and none is given: give "
                              f"--platform-option bucket=NAME or set {BUCKET_ENV}")
        return bucket

    def _launch(self, spec: Any) -> None:
        from google.api_core import exceptions

        base = resource_name()
        self.zone = self.option("zone", "ROSLAB_GCE_ZONE", "us-central1-a") or ""
        source = ssh_source(spec.options.get("ssh_from"))  # before anything is made
        marks = gc.owner_marks()
        labels = {k: label_value(v) for k, v in marks.items()}
        image = self._image(spec.image, base, labels, marks)
        network = self.option("network", "ROSLAB_GCE_NETWORK", "global/networks/default")
        self._create(
            "firewall", f"{base}-ssh",
            lambda: self._wait_op(self.client("Firewalls").insert(
                project=self.project, firewall_resource={
                    "name": f"{base}-ssh", "network": network, "direction": "INGRESS",
                    "source_ranges": [source], "target_tags": [base],
                    "allowed": [{"I_p_protocol": "tcp", "ports": ["22"]}],
                    "description": json.dumps(gc.owner_marks())}), f"{base}-ssh"),
            lambda name: [name], self._delete_firewall)
        user_data = spec.cloud_config.text if spec.cloud_config is not None else ""
        machine_type = self.option("instance_type", "ROSLAB_GCE_MACHINE_TYPE", "e2-small")
        metadata = [{"key": "user-data", "value": user_data},
                    {"key": "serial-port-enable", "value": "true"}]
        if spec.ssh_keys:  # the lab's key, as the gce datasource reads it
            metadata.append({"key": "ssh-keys", "value": gce_ssh_keys(spec.ssh_keys)})
        instance = {
            "name": base, "machine_type": f"zones/{self.zone}/machineTypes/{machine_type}",
            "labels": labels, "tags": {"items": [base]},
            "metadata": {"items": metadata},
            "disks": [{"boot": True, "auto_delete": True,
                       "initialize_params": {"source_image": image, "labels": labels}}],
            "network_interfaces": [{"network": network, "access_configs": [
                {"name": "External NAT", "type_": "ONE_TO_ONE_NAT"}]}],
        }
        try:
            self.instance = self._create(
                "instance", base,
                lambda: self._wait_op(self.client("Instances").insert(
                    project=self.project, zone=self.zone, instance_resource=instance), base),
                lambda name: [name], self._delete_instance)
        except exceptions.GoogleAPICallError as err:
            raise ConfigError(f"gce refused the instance: {err.message}") from None

    def _image(self, image: Image, base: str, labels: dict[str, str],
               marks: dict[str, str]) -> str:
        """The source image URL: an existing image, or one made for this run from a
        release tarball in Cloud Storage, or uploaded there first (marked, deleted after)."""
        from google.api_core import exceptions

        ref = self._upload(image.path, base, marks) if image.kind == GCE_TARBALL else image.ref
        if ref.startswith("gs://"):
            url = "https://storage.googleapis.com/" + ref[len("gs://"):]
            self._create("image", base, lambda: self._wait_op(self.client("Images").insert(
                project=self.project, image_resource={
                    "name": base, "raw_disk": {"source": url}, "labels": labels}), base),
                lambda name: [name], self._delete_image)
            return f"projects/{self.project}/global/images/{base}"
        path = ref if ref.startswith("projects/") else \
            f"projects/{self.project}/global/images/{ref}"
        m = re.fullmatch(r"projects/([^/]+)/global/images/([^/]+)", path)
        if not m:
            raise ImageError(f"gce image {ref!r}: give NAME, projects/P/global/images/NAME, "
                             "gs://BUCKET/rancheros-gce.tar.gz or a local "
                             "rancheros-gce.tar.gz (uploaded to a bucket)")
        try:
            self.client("Images").get(project=m.group(1), image=m.group(2))
        except exceptions.NotFound:
            raise ImageError(f"gce has no image {path} (`gcloud compute images list` shows "
                             "what it has)") from None
        return path

    def _upload(self, path: Path, base: str, marks: dict[str, str]) -> str:
        """Upload the release tarball as an object of this machine's own (the marks as its
        metadata, in the ledger before the image made from it); its gs:// URL."""
        from google.api_core import exceptions

        name = f"{base}.tar.gz"
        bucket = self._storage().bucket(self._bucket())

        def upload() -> str:
            blob = bucket.blob(name)
            blob.metadata = marks
            # if_generation_match=0: create, never overwrite (a retry after a lost answer
            # fails instead of uploading twice)
            blob.upload_from_filename(str(path), content_type="application/gzip",
                                      if_generation_match=0)
            return name

        try:
            self._create("object", name, upload,
                         lambda n: [n] if bucket.get_blob(n) is not None else [],
                         lambda n: _delete_object(bucket, n))
        except exceptions.NotFound:
            raise ConfigError(f"gce: no Cloud Storage bucket {bucket.name} to upload {path} "
                              f"to (`gcloud storage buckets list`; set {BUCKET_ENV} or the "
                              "bucket option)") from None
        except exceptions.Forbidden as err:
            raise ConfigError(f"gce: may not upload to bucket {bucket.name}: {err.message}") \
                from None
        return f"gs://{bucket.name}/{name}"

    def _wait_op(self, operation: Any, ident: str) -> str:
        """Wait (bounded) for a zonal or global operation; its error as a ConfigError."""
        operation.result(timeout=self.boot_wait)
        if operation.error_code:
            raise ConfigError(f"gce: {operation.error_message or operation.error_code}")
        return ident

    def _get(self) -> Any:
        from google.api_core import exceptions

        try:
            return self.client("Instances").get(project=self.project, zone=self.zone,
                                                instance=self.instance)
        except exceptions.NotFound:
            return None

    def _status(self) -> str | None:
        found = self._get()
        return found.status if found is not None else None

    def _address_now(self) -> str | None:
        found = self._get()
        if found is None or not found.network_interfaces:
            return None
        nic = found.network_interfaces[0]
        nat = [a.nat_i_p for a in nic.access_configs if a.nat_i_p]
        return nat[0] if nat else nic.network_i_p or None

    def console_text(self) -> str | None:
        if self.instance is None:
            return None
        return self.client("Instances").get_serial_port_output(request={
            "project": self.project, "zone": self.zone, "instance": self.instance,
            "port": SERIAL_PORT}).contents

    # delete ------------------------------------------------------------------------------

    def _delete_instance(self, instance: str) -> None:
        _delete(self.client("Instances"), "instance", instance, self.delete_wait,
                self.poll_interval, project=self.project, zone=self.zone)

    def _delete_firewall(self, name: str) -> None:
        _delete(self.client("Firewalls"), "firewall", name, self.delete_wait,
                self.poll_interval, project=self.project)

    def _delete_image(self, name: str) -> None:
        _delete(self.client("Images"), "image", name, self.delete_wait, self.poll_interval,
                project=self.project)

    @classmethod
    def rehearsal(cls) -> AbstractContextManager[Rehearsal]:
        """The Compute Engine and Cloud Storage stand-in whose instances boot under QEMU
        (drivers/rehearsal/gce.py)."""
        from drivers.rehearsal.gce import rehearsal

        return rehearsal()

    @classmethod
    def reference_artifact(cls, options: dict[str, Any]) -> str | None:
        """The reference build's GCE tarball (`roslab image build --disks`): uploaded to the
        bucket and made an image for the run."""
        return "rancheros-gce.tar.gz"

    @classmethod
    def collect_garbage(cls, older_than: float | None, dry_run: bool,
                        options: dict[str, Any]) -> list[gc.Garbage]:
        clients, project = cls._connect()
        wait, interval = cls.delete_wait, cls.poll_interval
        candidates = []
        for zone, scoped in clients["Instances"].aggregated_list(project=project):
            zone_name = zone.rsplit("/", 1)[-1]
            for inst in scoped.instances:
                candidates.append(Candidate(
                    "instance", f"{zone_name}/{inst.name}", dict(inst.labels),
                    epoch(inst.creation_timestamp),
                    lambda i=inst.name, z=zone_name: _delete(
                        clients["Instances"], "instance", i, wait, interval, project=project,
                        zone=z)))
        for rule in clients["Firewalls"].list(project=project):
            marks: dict[str, str] = {}
            with contextlib.suppress(ValueError, TypeError):
                marks = dict(json.loads(rule.description or "{}"))
            candidates.append(Candidate(
                "firewall", rule.name, marks, epoch(rule.creation_timestamp),
                lambda n=rule.name: _delete(clients["Firewalls"], "firewall", n, wait,
                                            interval, project=project)))
        for image in clients["Images"].list(project=project):
            candidates.append(Candidate(
                "image", image.name, dict(image.labels), epoch(image.creation_timestamp),
                lambda n=image.name: _delete(clients["Images"], "image", n, wait, interval,
                                             project=project)))
        bucket = options.get("bucket") or os.environ.get(BUCKET_ENV)
        if bucket:  # the tarballs runs uploaded there (after the images made from them)
            candidates += _object_candidates(cls._storage().bucket(bucket))
        return sweep(candidates, older_than, dry_run)


def _object_candidates(bucket: Any) -> list[Candidate]:
    from google.api_core import exceptions

    try:
        return [Candidate("object", f"gs://{bucket.name}/{blob.name}",
                          dict(blob.metadata or {}),
                          blob.time_created.timestamp() if blob.time_created else None,
                          lambda n=blob.name: _delete_object(bucket, n))
                for blob in bucket.list_blobs(prefix=OBJECT_PREFIX)]
    except exceptions.NotFound:
        raise ConfigError(f"gce: no Cloud Storage bucket {bucket.name} to sweep (set "
                          f"{BUCKET_ENV} to the bucket runs upload to, or unset it)") from None


def _delete_object(bucket: Any, name: str) -> None:
    """Cloud Storage deletes at once: gone when the call returns."""
    from google.api_core import exceptions

    with contextlib.suppress(exceptions.NotFound):
        bucket.delete_blob(name)


def _delete(client: Any, kind: str, name: str, timeout: float, interval: float,
            **where: str) -> None:
    """Delete a GCE object by name and wait until `get` says it is gone."""
    from google.api_core import exceptions

    with contextlib.suppress(exceptions.NotFound):
        client.delete(**where, **{kind: name}).result(timeout=timeout)

    def gone() -> bool:
        try:
            client.get(**where, **{kind: name})
        except exceptions.NotFound:
            return True
        return False

    wait_for(gone, timeout, f"gce {kind} {name} deleted", interval)
