//! List requests and answers: query parameters, pages, `{data, has_more}`.

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::Serialize;
use std::collections::HashMap;

use crate::error::{ApiError, Detail, DetailCode, quote};

/// The query parameters of a list request, each at most once: which of two
/// values wins is not something a client should have to guess.
pub struct ListQuery(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for ListQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(pairs) =
            axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri).map_err(
                |rejection| {
                    ApiError::invalid("query", DetailCode::InvalidValue, rejection.body_text())
                },
            )?;
        let mut query = HashMap::new();
        for (name, value) in pairs {
            if query.contains_key(&name) {
                return Err(ApiError::invalid(
                    &name,
                    DetailCode::InvalidValue,
                    format!("the query parameter {name} is given more than once"),
                ));
            }
            query.insert(name, value);
        }
        Ok(ListQuery(query))
    }
}

/// `limit` (1–100, default 20) and `starting_after` of a list request.
pub struct Page {
    pub limit: usize,
    pub starting_after: Option<String>,
}

impl Page {
    /// Reads the page from `query`, which may also hold the list's `filters`; any
    /// other parameter is refused rather than ignored (a misspelt filter would
    /// otherwise answer everything).
    pub fn from_query(query: &HashMap<String, String>, filters: &[&str]) -> Result<Page, ApiError> {
        let mut details: Vec<Detail> = query
            .keys()
            .filter(|name| !["limit", "starting_after"].contains(&name.as_str()))
            .filter(|name| !filters.contains(&name.as_str()))
            .map(|name| {
                Detail::new(
                    name,
                    DetailCode::UnknownField,
                    format!("unknown query parameter {name}"),
                )
            })
            .collect();
        let limit = match query.get("limit").map(|text| text.parse::<i64>()) {
            None => 20,
            Some(Ok(limit @ 1..=100)) => limit as usize,
            Some(Ok(_)) => {
                details.push(Detail::new(
                    "limit",
                    DetailCode::OutOfRange,
                    "limit must be between 1 and 100",
                ));
                20
            }
            Some(Err(_)) => {
                details.push(Detail::new(
                    "limit",
                    DetailCode::InvalidType,
                    "limit must be an integer",
                ));
                20
            }
        };
        if !details.is_empty() {
            return Err(ApiError::validation(details));
        }
        Ok(Page {
            limit,
            starting_after: query.get("starting_after").cloned(),
        })
    }

    /// This page of a short list held whole, in its order; `id` names an item as
    /// `starting_after` does.
    pub fn of<T>(
        &self,
        items: Vec<T>,
        id: impl Fn(&T) -> &str,
    ) -> Result<(Vec<T>, bool), ApiError> {
        let start = match &self.starting_after {
            None => 0,
            Some(after) => {
                items
                    .iter()
                    .position(|item| id(item) == after)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "starting_after",
                            DetailCode::InvalidValue,
                            format!("{} is not in this list", quote(after)),
                        )
                    })?
                    + 1
            }
        };
        let mut page: Vec<T> = items.into_iter().skip(start).collect();
        let has_more = page.len() > self.limit;
        page.truncate(self.limit);
        Ok((page, has_more))
    }
}

/// `{"data": [...], "has_more": bool}`
pub fn list_body<T: Serialize>(data: Vec<T>, has_more: bool) -> Json<List<T>> {
    Json(List { data, has_more })
}

/// A page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct List<T> {
    pub data: Vec<T>,
    /// whether items follow this page (ask with `starting_after` = its last id)
    pub has_more: bool,
}
