//! Usage against prices: whether reported usage counts what a price charges for,
//! and the usage of a text answer whose provider reported none.

use super::types::{Completion, Price, Usage};

impl Usage {
    /// Whether nothing billable beyond requests is counted.
    pub fn is_empty(&self) -> bool {
        self.images == 0
            && self.megapixels_milli == 0
            && self.seconds_milli == 0
            && self.input_tokens == 0
            && self.output_tokens == 0
    }

    /// Whether these units count anything `price` charges for beyond requests. A
    /// price with no such unit is met by any units.
    pub fn meet(&self, price: &Price) -> bool {
        let priced = [
            (price.per_image, u64::from(self.images)),
            (price.per_megapixel, self.megapixels_milli),
            (price.per_second, self.seconds_milli),
            (price.per_million_input_tokens, self.input_tokens),
            (price.per_million_output_tokens, self.output_tokens),
        ];
        let charged: Vec<u64> = priced
            .iter()
            .filter(|(unit_price, _)| *unit_price > 0)
            .map(|(_, quantity)| *quantity)
            .collect();
        charged.is_empty() || charged.iter().any(|quantity| *quantity > 0)
    }

    /// These units with at least `requests` requests.
    pub fn max_requests(self, requests: u32) -> Usage {
        Usage {
            requests: self.requests.max(requests),
            ..self
        }
    }
}

impl Completion {
    /// The usage of a text answer whose provider reported none, from what was
    /// `estimated` for the input and from the answer itself: the estimate's input
    /// tokens, and a token per four characters of the text and tool calls (at least
    /// one, at most the estimate's output tokens), as the SDK's `approx_tokens`
    /// counts. Charged and reported like a provider's own count.
    pub fn estimated_text_usage(&self, estimated: &Usage) -> Usage {
        let characters = self.text.as_deref().unwrap_or_default().chars().count()
            + self
                .tool_calls
                .iter()
                .map(|c| c.name.chars().count() + c.arguments.chars().count())
                .sum::<usize>();
        let written = (characters as u64).div_ceil(4).max(1);
        Usage {
            requests: estimated.requests.max(1),
            input_tokens: estimated.input_tokens,
            output_tokens: match estimated.output_tokens {
                0 => written,
                ceiling => written.min(ceiling),
            },
            ..Usage::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_answer_without_reported_usage_is_counted_from_its_estimate_and_its_text() {
        let estimated = Usage {
            requests: 1,
            input_tokens: 12,
            output_tokens: 256,
            ..Usage::default()
        };
        let answer = Completion {
            text: Some("Echo: three two one".into()),
            assets: Vec::new(),
            usage: Usage::default(),
            finish_reason: None,
            tool_calls: Vec::new(),
        };
        let usage = answer.estimated_text_usage(&estimated);
        assert_eq!((usage.input_tokens, usage.output_tokens), (12, 5));
        assert_eq!(usage.requests, 1);
        // Never more than the estimate's ceiling, never nothing.
        let long = Completion {
            text: Some("x".repeat(10_000)),
            ..answer.clone()
        };
        assert_eq!(long.estimated_text_usage(&estimated).output_tokens, 256);
        let empty = Completion {
            text: Some(String::new()),
            ..answer
        };
        assert_eq!(empty.estimated_text_usage(&estimated).output_tokens, 1);
    }

    fn usage() -> Usage {
        Usage {
            requests: 1,
            ..Usage::default()
        }
    }

    /// Regression: an adapter priced per megapixel that reported `images: 1` on
    /// completion was charged $0; such usage does not meet its price.
    #[test]
    fn usage_meets_a_price_only_by_a_unit_the_price_charges_for() {
        let per_megapixel = Price {
            per_megapixel: 40_000,
            ..Price::default()
        };
        let images_only = Usage {
            images: 1,
            ..usage()
        };
        assert!(!images_only.meet(&per_megapixel));
        let measured = Usage {
            megapixels_milli: 1_048,
            ..usage()
        };
        assert!(measured.meet(&per_megapixel));
        // A per-request price is met by any usage, reported or not.
        let per_request = Price {
            per_request: 10_000,
            ..Price::default()
        };
        assert!(usage().meet(&per_request) && Usage::default().meet(&per_request));
        // Tokens meet a token price even when only one side is counted.
        assert!(
            Usage {
                output_tokens: 5,
                ..usage()
            }
            .meet(&Price {
                per_million_input_tokens: 180_000,
                per_million_output_tokens: 180_000,
                ..Price::default()
            })
        );
    }
}
