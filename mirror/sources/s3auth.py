"""Who the S3 source is and how it proves it: botocore's standard credential chain and its
SigV4 signer, applied afresh to every attempt of every request.

The chain (static keys, ``AWS_PROFILE`` and the shared files, SSO, assume-role, container and
instance roles...) may read files and ask a metadata service, so it is resolved once in a
thread, never on the event loop; so is a refresh of expiring credentials. Signing itself is
pure computation (about 60 us a request here), done on the loop just before the request leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials

from mirror.errors import ConfigError

DEFAULT_REGION = "us-east-1"
# The variables read here: the source declares them (Backend.credentials) so that the command
# line passes them (and the config file's [credentials] table) in SourceSettings.env.
ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
            "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")
NO_CREDENTIALS = ("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                  "(and AWS_SESSION_TOKEN for temporary ones), or AWS_PROFILE with the shared "
                  "files, or run with --anonymous for a public bucket")


@dataclass(frozen=True)
class Identity:
    """What a resolved chain gives: the signing region and the credentials (None: anonymous
    requests, asked for with --anonymous)."""

    region: str
    credentials: Credentials | None


def resolve(env: Mapping[str, str], region: str | None, anonymous: bool) -> Identity:
    """The credentials and region for this host. Blocking (files, maybe a metadata service):
    call it in a thread."""
    import botocore.session
    from botocore.exceptions import BotoCoreError

    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if bool(key) != bool(secret):
        raise ConfigError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together: one is set, "
                          "the other is not")
    try:
        session = botocore.session.Session(profile=env.get("AWS_PROFILE") or None)
        for variable, name in (("credentials_file", "AWS_SHARED_CREDENTIALS_FILE"),
                               ("config_file", "AWS_CONFIG_FILE")):
            if env.get(name):
                session.set_config_variable(variable, env[name])
        chosen = (region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
                  or session.get_config_variable("region") or DEFAULT_REGION)
        if anonymous:
            return Identity(chosen, None)
        if key and secret:
            # Given to this process (environment or the config file's [credentials]): they
            # win over whatever the shared files hold, as in every AWS tool.
            return Identity(chosen, Credentials(key, secret, env.get("AWS_SESSION_TOKEN")))
        found = session.get_credentials()
    except BotoCoreError as exc:
        raise ConfigError(f"AWS credentials: {exc}") from exc
    if found is None:
        raise ConfigError(NO_CREDENTIALS)
    return Identity(chosen, found)


class Signer:
    """Signs requests for one region with one identity (botocore's S3 SigV4: the path is
    signed exactly as sent, never normalised, and the empty body's SHA-256 is declared)."""

    def __init__(self, identity: Identity) -> None:
        self.region = identity.region
        self._credentials = identity.credentials

    @property
    def anonymous(self) -> bool:
        return self._credentials is None

    async def current(self) -> ReadOnlyCredentials | None:
        """The credentials to sign with now; a refresh (its own requests) runs in a thread."""
        creds = self._credentials
        if creds is None:
            return None
        if isinstance(creds, RefreshableCredentials) and creds.refresh_needed():
            return await asyncio.to_thread(creds.get_frozen_credentials)
        return creds.get_frozen_credentials()

    def sign(self, credentials: ReadOnlyCredentials | None, method: str, url: str,
             headers: Mapping[str, str]) -> dict[str, str]:
        """``headers`` with the signature's (X-Amz-Date, X-Amz-Content-SHA256, Authorization,
        the session token); a new date each call, so each attempt is signed afresh."""
        if credentials is None:
            return dict(headers)
        request = AWSRequest(method=method, url=url, headers=dict(headers))
        S3SigV4Auth(credentials, "s3", self.region).add_auth(request)
        return {name: str(value) for name, value in request.headers.items()}


__all__ = ["DEFAULT_REGION", "ENV_VARS", "NO_CREDENTIALS", "Identity", "Signer", "resolve"]
