//! End-to-end: a real server process, real adapters compiled from `plugins/`, and
//! provider emulators on loopback, driven over HTTP like a client would.

mod api;
mod chat_input;
mod cli_errors;
mod declared_models;
mod durability;
mod executions;
mod files;
mod files_s3;
mod hardening_api;
mod hardening_dns;
mod hardening_edge;
mod hardening_files;
mod hardening_providers;
mod hardening_sandbox;
mod logs;
mod many_hosts;
mod metrics;
mod money;
mod object_store;
mod openai_door;
mod openai_door_models;
mod openapi;
mod plugin_author;
mod plugin_mistakes;
mod plugins;
mod postgres_store;
mod receiver;
mod restart;
mod sandbox;
mod soak;
mod support;
mod test_database;
mod webhooks;
