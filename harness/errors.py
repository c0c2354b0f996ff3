"""Exceptions a user can act on. The CLI prints their message on one line and exits non-zero."""


class HarnessError(Exception):
    """Base of every error the harness raises on purpose."""


class MalformedModelError(HarnessError):
    """The file is not a .tflite model, or its contents contradict themselves."""


class UnsupportedModelError(HarnessError):
    """A valid model the harness cannot run: an op, a dtype or a shape it does not support."""


class DoesNotFitError(HarnessError):
    """The model needs more SRAM or flash than the board has (`memory` "SRAM" or "flash", `over` bytes,
    where the linker said so)."""

    def __init__(self, message: str, memory: str | None = None, over: int = 0) -> None:
        super().__init__(message)
        self.memory = memory
        self.over = over


class BuildError(HarnessError):
    """The toolchain failed."""


class TargetError(HarnessError):
    """The device (board, QEMU, host library) failed, hung or spoke nonsense."""


class ProtocolError(TargetError):
    """A frame was garbled, missing or unexpected."""


def did_you_mean(name: str, known) -> str:
    """' (did you mean X?)' for the nearest of `known` to a typo, or ''."""
    import difflib

    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {near[0]}?)" if near else ""
