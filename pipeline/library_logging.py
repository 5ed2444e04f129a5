"""Keep diffusers' and transformers' loading chatter (progress bars, optional-backend notices) off the console."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def quiet_loading():
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    levels = (dlog.get_verbosity(), tlog.get_verbosity())
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])
        dlog.enable_progress_bar()
        tlog.enable_progress_bar()


def import_diffusers_quietly() -> None:
    """diffusers' SD3 module touches transformers' image processors, which warn once that torchvision
    (not a dependency here) is missing; that warning is about image encoders SD3 text-to-image never uses."""
    with quiet_loading():
        import diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3  # noqa: F401
