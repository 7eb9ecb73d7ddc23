//! The record of a request whose client left before the answer. actix drops a request's future when its
//! connection fails (a reset), so the record stage never reaches the record it writes after the answer; the
//! [`Abandonment`] it arms for the request's whole run writes it from its drop instead.
//!
//! An abandoned call is recorded with status 499 (the client closed the request) and charged as it was admitted:
//! its debit stands, because its work ran until the drop and a write it started may still commit (then the
//! write's own record, committed with it, is the one kept: the store keeps the first record of an id, and a write
//! queued before the drop commits before this record, `store::sqlite::writer`'s queue being in order). A call
//! dropped after its answer was made but before its record was queued keeps that answer's status and charge.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpMessage, web};

use super::ledger::{Charge, Debit, OperationCost, RequestMeter, usage_event};
use crate::auth::guard::Caller;
use crate::state::AppState;

/// The status of an abandoned call's usage event: nginx's "client closed request".
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// What the stages learned about a request so far, shared by the request (an extension, [`Notes`]) and its
/// [`Abandonment`], which cannot read the request's extensions once the request has been passed on.
#[derive(Default)]
struct Known {
    caller: Option<Arc<Caller>>,
    debit: Option<Debit>,
    cost: Option<OperationCost>,
    /// The answer's status and whether it is charged, once the pipeline has answered.
    answered: Option<(StatusCode, bool)>,
}

/// Request extension, the [`Known`] of the request's [`Abandonment`]: what the limit stage tells the request's [`Abandonment`] as it learns it: the caller first, then each debit as
/// soon as it is made (a request dropped between a debit and the stage's answer is charged for it).
#[derive(Clone)]
pub struct Notes(Rc<RefCell<Known>>);

impl Notes {
    /// The request's notes; `None` outside the record stage (a handler called on its own in a test).
    pub fn of(request: &impl HttpMessage) -> Option<Notes> {
        request.extensions().get::<Notes>().cloned()
    }

    pub fn caller(&self, caller: &Arc<Caller>) {
        self.0.borrow_mut().caller = Some(Arc::clone(caller));
    }

    /// The call's debit so far (a capped client's included once it is asked for: a call dropped while its client's
    /// debit is in flight is charged as if the debit was accepted).
    pub fn debit(&self, debit: Option<Debit>) {
        self.0.borrow_mut().debit = debit;
    }

    pub fn cost(&self, cost: Option<OperationCost>) {
        self.0.borrow_mut().cost = cost;
    }
}

/// Armed by the record stage before the request runs; writes the request's usage event if it is dropped before
/// [`Abandonment::disarm`] (the record stage queues the record itself right after).
pub struct Abandonment {
    state: web::Data<AppState>,
    /// The request's meter (its record's ids and measures) until the guard is disarmed.
    meter: Option<RequestMeter>,
    request_id: String,
    known: Rc<RefCell<Known>>,
}

impl Abandonment {
    /// Arms the guard of the request `meter` measures and leaves its [`Notes`] on the request.
    pub fn arm(request: &impl HttpMessage, state: web::Data<AppState>, meter: RequestMeter) -> Self {
        let known = Rc::new(RefCell::new(Known::default()));
        request.extensions_mut().insert(Notes(Rc::clone(&known)));
        let request_id = crate::request::current_id().unwrap_or_default();
        Abandonment { state, meter: Some(meter), request_id, known }
    }

    /// The pipeline answered `status`, charged or not: a drop from here on records that answer.
    pub fn answered(&self, status: StatusCode, billable: bool) {
        self.known.borrow_mut().answered = Some((status, billable));
    }

    /// The record stage is about to queue the request's record itself; gives the meter back.
    pub fn disarm(mut self) -> RequestMeter {
        self.meter.take().expect("an armed guard holds its meter")
    }
}

impl Drop for Abandonment {
    fn drop(&mut self) {
        let Some(meter) = self.meter.take() else { return };
        let known = self.known.borrow();
        let debit = known.debit;
        let (status, billable) = known
            .answered
            .unwrap_or_else(|| (StatusCode::from_u16(CLIENT_CLOSED_REQUEST).expect("a valid status"), debit.is_some()));
        let charge = Charge {
            tenant_id: known.caller.as_ref().and_then(|c| c.tenant.as_ref().map(|t| t.id)),
            identified: known.caller.as_ref().map(|c| c.principal.clone()),
            debit,
            cost: known.cost,
            billable,
            refusal: None,
        };
        let route = self.state.routes.template_of(&meter.operation).unwrap_or("unmatched").to_owned();
        let recorded_at = self.state.clock.now();
        let event = usage_event(&meter, &charge, route, status, 0, std::mem::take(&mut self.request_id), recorded_at);
        tracing::debug!(
            event_id = %event.event_id,
            operation = %event.operation_id,
            status = event.status,
            "the client left before its answer; its call is recorded"
        );
        self.state.recorder.record_detached(event);
        // An answered call that is charged nothing gives its debit back, as the record stage would have.
        if let Some(debit) = debit.filter(|_| !billable)
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let state = self.state.clone();
            tokio::spawn(async move { super::ledger::give_back(&state, &debit).await });
        }
    }
}
