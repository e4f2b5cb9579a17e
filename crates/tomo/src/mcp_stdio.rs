//! `tomo mcp`: an MCP server on stdio (rmcp) for clients that start their servers as processes
//! (Claude Desktop, Claude Code). It holds no tool of its own: it forwards `tools/list` and
//! `tools/call` to the control plane's `/mcp` with the client config's URL, token and CA, so the
//! tools and every guardrail (role filter, approval, rate limit, redaction) are the control
//! plane's. Logs go to stderr; stdout carries only the protocol.

use std::process::ExitCode;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, ListToolsResult,
    PaginatedRequestParams, ResultType, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt as _};
use serde_json::{Value, json};

use crate::client::Api;
use crate::{ClientArgs, Failure};

/// The protocol revision spoken to the control plane.
const UPSTREAM_PROTOCOL: &str = "2025-06-18";

#[derive(Debug, Clone)]
struct Bridge {
    api: Api,
    /// The control plane's own `initialize` answer (server info and instructions).
    upstream: Value,
}

impl Bridge {
    /// Sends one request upstream and returns its `result`, or the reason it failed.
    async fn request(&self, method: &str, params: Value) -> Result<Value, McpError> {
        let message = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let reply = self
            .api
            .post_mcp(&message, UPSTREAM_PROTOCOL)
            .await
            .map_err(|f| McpError::internal_error(describe(&f), None))?;
        if !reply.status.is_success() {
            let f = crate::client::api_failure(&reply, 1);
            return Err(McpError::invalid_request(describe(&f), None));
        }
        if let Some(e) = reply.body.get("error") {
            let message = e["message"].as_str().unwrap_or("error").to_owned();
            return Err(McpError::new(
                rmcp::model::ErrorCode(e["code"].as_i64().unwrap_or(-32603) as i32),
                message,
                e.get("data").cloned(),
            ));
        }
        reply.body.get("result").cloned().ok_or_else(|| {
            McpError::internal_error("the control plane's answer has no result", None)
        })
    }
}

fn describe(f: &Failure) -> String {
    match &f.hint {
        Some(h) => format!("{} (hint: {h})", f.message),
        None => f.message.clone(),
    }
}

impl ServerHandler for Bridge {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("tomo", env!("CARGO_PKG_VERSION")));
        if let Some(text) = self.upstream["instructions"].as_str() {
            info = info.with_instructions(text);
        }
        info
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let params = serde_json::to_value(request).unwrap_or(Value::Null);
        let result = self
            .request(
                "tools/list",
                if params.is_null() { json!({}) } else { params },
            )
            .await?;
        let mut list: ListToolsResult = serde_json::from_value(result)
            .map_err(|e| McpError::internal_error(format!("the tool list: {e}"), None))?;
        // The answer of the revision spoken upstream; rmcp fits it to the client's revision.
        list.result_type = Some(ResultType::COMPLETE);
        Ok(list)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let params =
            json!({"name": request.name, "arguments": request.arguments.unwrap_or_default()});
        let result = self.request("tools/call", params).await?;
        let mut result: CallToolResult = serde_json::from_value(result)
            .map_err(|e| McpError::internal_error(format!("the tool result: {e}"), None))?;
        result.result_type = Some(ResultType::COMPLETE);
        Ok(result.into())
    }
}

/// Serves MCP on stdin/stdout until the client closes it.
pub async fn run(client: &ClientArgs) -> Result<ExitCode, Failure> {
    let api = Api::from_args(client)?;
    // Fail early, with a hint, when the control plane or the token is wrong.
    let probe = Bridge {
        api: api.clone(),
        upstream: Value::Null,
    };
    let upstream = probe
        .request(
            "initialize",
            json!({
                "protocolVersion": UPSTREAM_PROTOCOL,
                "capabilities": {},
                "clientInfo": {"name": "tomo-mcp-stdio", "version": env!("CARGO_PKG_VERSION")},
            }),
        )
        .await
        .map_err(|e| {
            Failure::new(
                2,
                format!("the control plane's MCP endpoint: {}", e.message),
            )
        })?;
    let bridge = Bridge { api, upstream };
    let service = bridge
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| Failure::new(2, format!("MCP on stdio: {e}")))?;
    service
        .waiting()
        .await
        .map_err(|e| Failure::new(2, format!("MCP on stdio: {e}")))?;
    Ok(ExitCode::SUCCESS)
}
