//! The transfer engine: encode → upload (push), download → verify → unpack (pull), direct agent-to-agent.
