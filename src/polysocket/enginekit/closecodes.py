"""Close codes (RFC 6455 7.4 and the IANA registry), named once for the core and engines."""

from __future__ import annotations

import enum

__all__ = ["CloseCode", "valid_close_code"]


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    #: Never on the wire: a close frame that carried no code.
    NO_STATUS = 1005
    #: Never on the wire: the connection ended without a close frame.
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    #: Never on the wire: the TLS handshake failed.
    TLS_HANDSHAKE = 1015


def valid_close_code(code: int) -> bool:
    """Whether ``code`` may travel in a close frame (RFC 6455 7.4.1, 7.4.2 and the IANA
    registry): 1000-1003, 1007-1014 and the application range 3000-4999. 1005, 1006 and
    1015 only ever describe a connection locally; anything else is a protocol error."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999
