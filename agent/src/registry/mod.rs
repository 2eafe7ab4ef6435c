//! OCI distribution client used by the transfer engine.
