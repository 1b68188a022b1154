//! Executions: acceptance ([`create`]: validation, estimate, hold, idempotency), the
//! durable lifecycle and reads ([`records`]), waiting ([`waiting`], on the endings
//! [`watchers`] hand over) and the streams of `STREAMING` executions ([`live`],
//! with the hold-back rule of [`relay`]). The dispatcher ([`dispatch`]) drives
//! accepted executions; [`failure`] types why an attempt failed.

mod create;
mod db;
pub mod dispatch;
mod failure;
mod fallbacks;
pub mod input;
mod live;
pub mod model;
mod records;
pub mod relay;
mod view;
mod waiting;
mod watchers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::ExecutionSettings;
use crate::files::Files;
use crate::routing::Router;
use crate::store::Store;
use create::InputRules;
pub use create::{
    Accepted, CreateOutcome, CreateRequest, Created, IDEMPOTENT_ID_KEY, request_hash,
};
pub use fallbacks::{MAX_FALLBACK_MODELS, check_default_fallbacks};
pub use live::StreamMessage;
pub use model::{Claim, Execution, ExecutionError, Mode, Status};
pub use records::{Ending, LedgerReport};
pub use view::{AcceptedView, ExecutionView, ResultView};

pub struct Executions {
    store: Store,
    router: Arc<Router>,
    settings: ExecutionSettings,
    files: Arc<Files>,
    /// per (plugin sha256, slug): the input schema's validator and file properties
    validators: Mutex<HashMap<(String, String), Arc<InputRules>>>,
    /// the endings of executions someone waits on, and of those accepted here
    watchers: watchers::Watchers,
    /// event streams of running `STREAMING` executions
    streams: Mutex<HashMap<String, live::LiveStream>>,
    dispatch: tokio::sync::mpsc::UnboundedSender<Accepted>,
    /// wakes the webhook delivery worker
    outbox: Arc<tokio::sync::Notify>,
    /// the server's secret for the ids of executions created with an idempotency key
    id_key: Arc<[u8]>,
}

impl Executions {
    pub fn new(
        store: Store,
        router: Arc<Router>,
        settings: ExecutionSettings,
        files: Arc<Files>,
        dispatch: tokio::sync::mpsc::UnboundedSender<Accepted>,
        outbox: Arc<tokio::sync::Notify>,
        id_key: Vec<u8>,
    ) -> Executions {
        Executions {
            store,
            router,
            settings,
            files,
            validators: Mutex::default(),
            watchers: watchers::Watchers::default(),
            streams: Mutex::default(),
            dispatch,
            outbox,
            id_key: id_key.into(),
        }
    }
}

/// The event an execution change causes: `started` when it first starts running,
/// one per terminal status.
pub fn lifecycle_event(was_started: bool, execution: &Execution) -> Option<&'static str> {
    match execution.status {
        Status::Completed => Some("execution.completed"),
        Status::Failed => Some("execution.failed"),
        Status::Cancelled => Some("execution.cancelled"),
        Status::Expired => Some("execution.expired"),
        Status::Processing | Status::AwaitingWebhook
            if !was_started && execution.started_at.is_some() =>
        {
            Some("execution.started")
        }
        _ => None,
    }
}
