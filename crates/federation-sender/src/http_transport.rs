//! [`Transport`] over `federation-client`: signed `PUT /_matrix/federation/v1/send/{txnId}`.
//!
//! Error classes: connection problems, timeouts, unreadable answers, 401, 408, 429 and 5xx
//! are retried with backoff (the destination may recover); 400 and 403 (the receiver refuses
//! this transaction), a destination that resolves only to denied IP ranges, a bad server name
//! or disabled federation are permanent for this transaction. Other 4xx (e.g. 404 from a
//! misrouted proxy) are retried: dropping PDUs on a misconfiguration would lose them.

use federation_client::{FederationClient, FederationError};
use ruma::ServerName;
use serde_json::Value;

use crate::{Transport, TransportError};

/// Whether a failed transaction should be retried.
pub(crate) fn classify(error: FederationError) -> TransportError {
    let message = error.to_string();
    match error {
        FederationError::Status {
            status: 400 | 403, ..
        } => TransportError::Rejected(message),
        FederationError::Disabled
        | FederationError::BadServerName(_)
        | FederationError::Denied(_)
        | FederationError::Config(_) => TransportError::Rejected(message),
        _ => TransportError::Retry(message),
    }
}

impl Transport for FederationClient {
    async fn send_transaction(
        &self,
        destination: &ServerName,
        txn_id: &str,
        body: Value,
    ) -> Result<Value, TransportError> {
        FederationClient::send_transaction(self, destination.as_str(), txn_id, &body)
            .await
            .map(|r| r.body)
            .map_err(classify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> FederationError {
        FederationError::Status {
            destination: "d".into(),
            status,
            body: String::new(),
        }
    }

    #[test]
    fn refusals_are_permanent_outages_are_retried() {
        for s in [400, 403] {
            assert!(matches!(classify(status(s)), TransportError::Rejected(_)));
        }
        for s in [401, 404, 408, 429, 500, 502, 503] {
            assert!(
                matches!(classify(status(s)), TransportError::Retry(_)),
                "{s}"
            );
        }
        assert!(matches!(
            classify(FederationError::Denied("d".into())),
            TransportError::Rejected(_)
        ));
        assert!(matches!(
            classify(FederationError::Transport {
                destination: "d".into(),
                message: "refused".into()
            }),
            TransportError::Retry(_)
        ));
    }
}
