"""Protocol constants: message type bytes, authentication codes, special
request codes, transaction status bytes and the SQLSTATEs ecluse sends.

Type bytes are kept as ints because indexing a bytes object yields ints.
"""

from __future__ import annotations

import enum

PROTOCOL_3_0 = 196608  # (3 << 16) | 0
PROTOCOL_MAJOR_3 = 3
LATEST_MINOR = 0  # protocol 3.0 is what ecluse speaks to clients today

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


class TransactionStatus(bytes, enum.Enum):
    """The status byte of ReadyForQuery."""

    IDLE = b"I"
    IN_TRANSACTION = b"T"
    FAILED = b"E"


STATUS_IDLE = ord("I")
STATUS_IN_TRANSACTION = ord("T")
STATUS_FAILED = ord("E")


class Auth(enum.IntEnum):
    """Authentication request codes in the 'R' message."""

    OK = 0
    KERBEROS_V5 = 2
    CLEARTEXT_PASSWORD = 3
    MD5_PASSWORD = 5
    GSS = 7
    GSS_CONTINUE = 8
    SSPI = 9
    SASL = 10
    SASL_CONTINUE = 11
    SASL_FINAL = 12


# The run-time parameters PostgreSQL reports with ParameterStatus, at startup and
# whenever they change, spelled as it reports them (protocol-flow.html,
# "Asynchronous Operations"; in_hot_standby and default_transaction_read_only
# from 14, scram_iterations from 16). Extensions may report more (Citus 12
# reports search_path).
REPORTED_PARAMETERS = (
    "application_name", "client_encoding", "DateStyle", "default_transaction_read_only",
    "in_hot_standby", "integer_datetimes", "IntervalStyle", "is_superuser",
    "scram_iterations", "server_encoding", "server_version",
    "session_authorization", "standard_conforming_strings", "TimeZone",
)


# Frontend (client -> server) message types.
FE_BIND = ord("B")
FE_CLOSE = ord("C")
FE_COPY_DATA = ord("d")
FE_COPY_DONE = ord("c")
FE_COPY_FAIL = ord("f")
FE_DESCRIBE = ord("D")
FE_EXECUTE = ord("E")
FE_FLUSH = ord("H")
FE_FUNCTION_CALL = ord("F")
FE_PARSE = ord("P")
FE_PASSWORD = ord("p")  # also SASLInitialResponse, SASLResponse, GSSResponse
FE_QUERY = ord("Q")
FE_SYNC = ord("S")
FE_TERMINATE = ord("X")

FRONTEND_TYPES = frozenset(
    {
        FE_BIND, FE_CLOSE, FE_COPY_DATA, FE_COPY_DONE, FE_COPY_FAIL, FE_DESCRIBE,
        FE_EXECUTE, FE_FLUSH, FE_FUNCTION_CALL, FE_PARSE, FE_PASSWORD, FE_QUERY,
        FE_SYNC, FE_TERMINATE,
    }
)

# After authentication: a PasswordMessage is no longer valid. PostgreSQL answers
# one with a FATAL error and closes, so forwarding it would let one client kill
# a server that another client gets next.
FRONTEND_SESSION_TYPES = FRONTEND_TYPES - {FE_PASSWORD}

# Backend (server -> client) message types.
BE_AUTHENTICATION = ord("R")
BE_BACKEND_KEY_DATA = ord("K")
BE_BIND_COMPLETE = ord("2")
BE_CLOSE_COMPLETE = ord("3")
BE_COMMAND_COMPLETE = ord("C")
BE_COPY_BOTH_RESPONSE = ord("W")
BE_COPY_DATA = ord("d")
BE_COPY_DONE = ord("c")
BE_COPY_IN_RESPONSE = ord("G")
BE_COPY_OUT_RESPONSE = ord("H")
BE_DATA_ROW = ord("D")
BE_EMPTY_QUERY_RESPONSE = ord("I")
BE_ERROR_RESPONSE = ord("E")
BE_FUNCTION_CALL_RESPONSE = ord("V")
BE_NEGOTIATE_PROTOCOL_VERSION = ord("v")
BE_NO_DATA = ord("n")
BE_NOTICE_RESPONSE = ord("N")
BE_NOTIFICATION_RESPONSE = ord("A")
BE_PARAMETER_DESCRIPTION = ord("t")
BE_PARAMETER_STATUS = ord("S")
BE_PARSE_COMPLETE = ord("1")
BE_PORTAL_SUSPENDED = ord("s")
BE_READY_FOR_QUERY = ord("Z")
BE_ROW_DESCRIPTION = ord("T")

BACKEND_TYPES = frozenset(
    {
        BE_AUTHENTICATION, BE_BACKEND_KEY_DATA, BE_BIND_COMPLETE, BE_CLOSE_COMPLETE,
        BE_COMMAND_COMPLETE, BE_COPY_BOTH_RESPONSE, BE_COPY_DATA, BE_COPY_DONE,
        BE_COPY_IN_RESPONSE, BE_COPY_OUT_RESPONSE, BE_DATA_ROW, BE_EMPTY_QUERY_RESPONSE,
        BE_ERROR_RESPONSE, BE_FUNCTION_CALL_RESPONSE, BE_NEGOTIATE_PROTOCOL_VERSION,
        BE_NO_DATA, BE_NOTICE_RESPONSE, BE_NOTIFICATION_RESPONSE, BE_PARAMETER_DESCRIPTION,
        BE_PARAMETER_STATUS, BE_PARSE_COMPLETE, BE_PORTAL_SUSPENDED, BE_READY_FOR_QUERY,
        BE_ROW_DESCRIPTION,
    }
)


class SqlState:
    """SQLSTATE codes ecluse sends to clients."""

    SUCCESSFUL_COMPLETION = "00000"
    CONNECTION_EXCEPTION = "08000"
    CONNECTION_FAILURE = "08006"
    SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION = "08001"
    PROTOCOL_VIOLATION = "08P01"
    FEATURE_NOT_SUPPORTED = "0A000"
    INVALID_AUTHORIZATION_SPECIFICATION = "28000"
    INVALID_PASSWORD = "28P01"
    INVALID_CATALOG_NAME = "3D000"
    INVALID_PARAMETER_VALUE = "22023"
    TOO_MANY_CONNECTIONS = "53300"
    QUERY_CANCELED = "57014"
    ADMIN_SHUTDOWN = "57P01"
    CANNOT_CONNECT_NOW = "57P03"
    IDLE_IN_TRANSACTION_TIMEOUT = "25P03"
    IDLE_SESSION_TIMEOUT = "57P05"
    ACTIVE_SQL_TRANSACTION = "25001"
    INTERNAL_ERROR = "XX000"
