"""The AmneziaWG block of a gateway file: its obfuscation parameters and their limits.
Split out of `reconciler.repo.model`, which re-exports it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationInfo, WithJsonSchema, field_validator

from reconciler.repo.strict import Strict

# AmneziaWG (the obfuscating WireGuard fork). Limits as amneziawg-go and its documentation
# state them: WireGuard's handshake initiation is 148 bytes and its response 92, so a padded
# message still fits a 1280-byte path when S1 <= 1280 - 148 and S2 <= 1280 - 92; the receiver
# tells the two apart by size, so 148 + S1 must differ from 92 + S2; the H values replace
# WireGuard's message types 1-4, so they must differ from each other and from 1-4.
AWG_PATH_MTU = 1280
AWG_INIT_SIZE, AWG_RESPONSE_SIZE = 148, 92
AWG_HEADER_MAX = 2**32 - 1  # a message type is a little-endian uint32


def _awg_range(lo: int, hi: int, what: str, why: str = "") -> Callable[[int], int]:
    def check(value: int) -> int:
        if not lo <= value <= hi:
            raise ValueError(f"{what} must be {lo}-{hi}{why}, not {value}")
        return value
    return check


def _awg_schema(lo: int, hi: int, what: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "integer", "minimum": lo, "maximum": hi, "description": what})


# Strict integers: YAML `true` or `4.0` are mistakes here, not numbers.
_S1_WHY = f" (the {AWG_INIT_SIZE}-byte initiation plus S1 must fit {AWG_PATH_MTU} bytes)"
_S2_WHY = f" (the {AWG_RESPONSE_SIZE}-byte response plus S2 must fit {AWG_PATH_MTU} bytes)"
AwgJc = Annotated[int, Field(strict=True), AfterValidator(_awg_range(1, 128, "Jc")),
                  _awg_schema(1, 128, "Jc: junk packets sent before each handshake")]
AwgJmin = Annotated[int, Field(strict=True), AfterValidator(_awg_range(0, AWG_PATH_MTU - 1, "Jmin")),
                    _awg_schema(0, AWG_PATH_MTU - 1, "Jmin: smallest junk packet, bytes")]
AwgJmax = Annotated[int, Field(strict=True), AfterValidator(_awg_range(1, AWG_PATH_MTU, "Jmax")),
                    _awg_schema(1, AWG_PATH_MTU, "Jmax: largest junk packet, bytes (> Jmin)")]
AwgS1 = Annotated[int, Field(strict=True),
                  AfterValidator(_awg_range(0, AWG_PATH_MTU - AWG_INIT_SIZE, "S1", _S1_WHY)),
                  _awg_schema(0, AWG_PATH_MTU - AWG_INIT_SIZE,
                              "S1: padding of the handshake initiation, bytes")]
AwgS2 = Annotated[int, Field(strict=True),
                  AfterValidator(_awg_range(0, AWG_PATH_MTU - AWG_RESPONSE_SIZE, "S2", _S2_WHY)),
                  _awg_schema(0, AWG_PATH_MTU - AWG_RESPONSE_SIZE,
                              "S2: padding of the handshake response, bytes (S1 + 56 != S2)")]
AwgHeader = Annotated[int, Field(strict=True),
                      AfterValidator(_awg_range(5, AWG_HEADER_MAX, "a message type header",
                                                " (1-4 are WireGuard's own message types)")),
                      _awg_schema(5, AWG_HEADER_MAX, "message type header; H1-H4 all different")]


class AmneziaWG(Strict):
    """Obfuscation parameters of an AmneziaWG gateway. Every customer must use exactly these
    (a mismatch drops data while handshakes may still succeed), so the gateway file is the
    one place they are written; the customer configs are rendered from this block."""

    jc: AwgJc
    jmin: AwgJmin
    jmax: AwgJmax
    s1: AwgS1
    s2: AwgS2
    h1: AwgHeader
    h2: AwgHeader
    h3: AwgHeader
    h4: AwgHeader

    # Rules across keys are checked on the later key, so the error points at a line to change.
    @field_validator("jmax")
    @classmethod
    def _jmin_below_jmax(cls, jmax: int, info: ValidationInfo) -> int:
        jmin = info.data.get("jmin")
        if jmin is not None and jmax <= jmin:
            raise ValueError(f"Jmax ({jmax}) must be greater than Jmin ({jmin})")
        return jmax

    @field_validator("s2")
    @classmethod
    def _sizes_differ(cls, s2: int, info: ValidationInfo) -> int:
        s1 = info.data.get("s1")
        if s1 is not None and AWG_INIT_SIZE + s1 == AWG_RESPONSE_SIZE + s2:
            raise ValueError(
                f"S1 + {AWG_INIT_SIZE - AWG_RESPONSE_SIZE} equals S2 ({s1} + "
                f"{AWG_INIT_SIZE - AWG_RESPONSE_SIZE} = {s2}): padded initiation and response "
                "would have the same size and the receiver could not tell them apart; "
                "change S2")
        return s2

    @field_validator("h2", "h3", "h4")
    @classmethod
    def _headers_distinct(cls, value: int, info: ValidationInfo) -> int:
        for other in ("h1", "h2", "h3")[: int(str(info.field_name)[1]) - 1]:
            if info.data.get(other) == value:
                raise ValueError(f"{str(info.field_name).upper()} equals {other.upper()} "
                                 f"({value}); H1-H4 must be four different values")
        return value

    def config_lines(self) -> tuple[tuple[str, str], ...]:
        """(key, value) in awg-quick spelling and order: the one source both the gateway's
        interface file and every customer format print."""
        return (("Jc", str(self.jc)), ("Jmin", str(self.jmin)), ("Jmax", str(self.jmax)),
                ("S1", str(self.s1)), ("S2", str(self.s2)), ("H1", str(self.h1)),
                ("H2", str(self.h2)), ("H3", str(self.h3)), ("H4", str(self.h4)))
