"""Optional parts of the install (``pip install 'nearest-prompt[EXTRA]'``) and the one-line refusal when
one is missing. The core (build, query, predict, interrogate, info, blend) needs none of them."""

from __future__ import annotations

from .errors import InputError

DISTRIBUTION = "nearest-prompt"
EXTRAS = {  # extra -> the modules it brings that the code imports
    "serve": ("fastapi", "uvicorn", "multipart", "prometheus_client", "fastapi_offline"),
    "eval": ("matplotlib",),
    "ray": ("ray", "ray.data"),
}


class MissingExtra(InputError):
    """A command needs an optional part of the install that is not there."""


def require(extra: str, *, what: str, param: str | None = None) -> None:
    """Refuse ``what`` (e.g. "serve") in one line naming the extra to install when one of its modules
    cannot be imported (``param``: the parameter that asked for it, if one did)."""
    for module in EXTRAS[extra]:
        try:
            __import__(module)
        except ImportError as e:
            raise MissingExtra(f"{what} needs the '{extra}' extra ({module} cannot be imported: {e}); install it "
                               f"with: pip install '{DISTRIBUTION}[{extra}]'", param=param) from None
