"""What the clouds reached through apache-libcloud (CloudStack, Aliyun ECS) share: the SDK,
credentials from environment variables, and a connected libcloud compute driver."""

from __future__ import annotations

from typing import Any, ClassVar

from drivers.cloud import CloudDriver, require_env


class LibcloudDriver(CloudDriver):
    sdk_module = "libcloud"
    sdk_package = "apache-libcloud"
    credential_vars: ClassVar[tuple[str, ...]]  # every one must be set
    credentials_are: ClassVar[str]  # what they are, for the message when one is missing

    @classmethod
    def check_credentials(cls, options: dict[str, Any]) -> None:
        require_env(cls.name, cls.credential_vars, cls.credentials_are)

    @classmethod
    def _connect(cls) -> Any:
        cls.sdk()
        cls.check_credentials({})
        from libcloud.compute.providers import get_driver

        return cls._libcloud(get_driver)

    @classmethod
    def _libcloud(cls, get_driver: Any) -> Any:
        """The provider's libcloud driver, made from the credentials (all set by now)."""
        raise NotImplementedError
