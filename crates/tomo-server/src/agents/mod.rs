//! The agents' side of the control plane (issue 14's layering): their WebSocket sessions and
//! handshake (`agent_ws`), and the hub that signs, sends and routes every call to a connected
//! agent (`hub`).

pub mod agent_ws;
pub mod hub;
