//! The connection world: one TCP connection is one `session` resource, in
//! an instance of its own.
//!
//! A [`Session`] owns the instance and the resource handle. The host calls
//! the constructor when a connection is accepted ([`Plugin::open_session`]),
//! `on-data` and `on-end` as the peer sends and closes, and the destructor
//! when the connection ends ([`Session::close`]). Calls never overlap: the
//! connection's task owns the session.
//!
//! A session whose instance failed (a trap, a timeout, a call abandoned
//! half-way) is poisoned: nothing more is called in it, not even the
//! destructor, and the instance is thrown away.

use std::net::SocketAddr;

use wasmtime::component::{Component, ComponentExportIndex, Func, ResourceAny, TypedFunc};
use wasmtime::{AsContextMut, Store};

use super::bindings::{self, CONNECTION_INTERFACE};
use super::{
    CallError, CallLimits, Funcs as InstanceFuncs, HostState, Instance, MAX_LOG_MESSAGE, Permit, Plugin, Reply,
};

/// Where the `session` resource's functions are in the component.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exports {
    new: ComponentExportIndex,
    on_data: ComponentExportIndex,
    on_end: ComponentExportIndex,
}

impl Exports {
    /// The connection interface's exports, if the component has that
    /// interface; `Err` names a missing function.
    pub(crate) fn find(component: &Component) -> Option<Result<Self, String>> {
        let interface = component.get_export_index(None, CONNECTION_INTERFACE)?;
        let get = |name: &str| {
            component
                .get_export_index(Some(&interface), name)
                .ok_or_else(|| format!("{CONNECTION_INTERFACE} does not export `{name}`"))
        };
        let found = || {
            Ok(Exports {
                new: get("[constructor]session")?,
                on_data: get("[method]session.on-data")?,
                on_end: get("[method]session.on-end")?,
            })
        };
        Some(found())
    }

    pub(super) fn funcs(
        &self,
        instance: &wasmtime::component::Instance,
        mut store: impl AsContextMut,
    ) -> Option<Funcs> {
        let mut get = |index| instance.get_func(&mut store, index);
        Some(Funcs { new: get(self.new)?, on_data: get(self.on_data)?, on_end: get(self.on_end)? })
    }
}

/// The `session` functions of one instance.
#[derive(Debug, Clone, Copy)]
pub(super) struct Funcs {
    new: Func,
    on_data: Func,
    on_end: Func,
}

impl Funcs {
    /// Check that the three functions have the contract's types.
    pub(super) fn typecheck(&self, store: &Store<HostState>) -> Result<(), String> {
        let describe = |name: &str, e: wasmtime::Error| format!("`{name}` has the wrong type: {}", super::one_line(&e));
        self.new
            .typed::<bindings::OpenParams<'_>, bindings::OpenResult>(store)
            .map_err(|e| describe("constructor", e))?;
        self.on_data
            .typed::<bindings::DataParams<'_>, bindings::DataResult>(store)
            .map_err(|e| describe("on-data", e))?;
        self.on_end.typed::<bindings::EndParams, bindings::EndResult>(store).map_err(|e| describe("on-end", e))?;
        Ok(())
    }
}

/// What a call of `on-data` asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Output {
    /// The bytes to write, or their size if they were over the cap.
    pub bytes: Reply,
    /// Close the connection once they are written.
    pub close: bool,
}

/// One connection's `session` resource in its own instance.
pub struct Session {
    instance: Instance,
    funcs: Funcs,
    /// `None` once dropped.
    resource: Option<ResourceAny>,
    /// Set while a call runs, and left set if its future was dropped half-way
    /// (a timeout): the instance's state is then unknown.
    in_call: bool,
    /// The instance failed: call nothing more in it.
    poisoned: bool,
}

impl Plugin {
    /// Create an instance in the room `permit` holds, and a session in it
    /// for the connection `peer` -> `local`.
    pub async fn open_session(
        &self,
        permit: Permit,
        peer: &SocketAddr,
        local: &SocketAddr,
        limits: &CallLimits,
    ) -> Result<Session, CallError> {
        let mut instance = self.instantiate_admitted(permit, limits).await?;
        let InstanceFuncs::Session(funcs) = instance.funcs else {
            return Err(CallError::Instantiate(anyhow::anyhow!("not a plugin of the connection world")));
        };
        // Instantiation armed the budget: the constructor is the first call.
        instance.calls = 1;
        let text = bindings::ConnectionText::new(peer, local);
        // SAFETY: the loader checked this type with `Func::typed`; only the
        // lifetime of the borrowed strings differs, which does not change the
        // canonical ABI.
        let new: TypedFunc<bindings::OpenParams<'_>, bindings::OpenResult> =
            unsafe { TypedFunc::new_unchecked(funcs.new) };
        let result = new.call_async(&mut instance.store, (text.view(),)).await;
        instance.store.data_mut().end_call();
        match result {
            Ok((resource,)) => {
                Ok(Session { instance, funcs, resource: Some(resource), in_call: false, poisoned: false })
            }
            Err(e) => Err(CallError::from_wasmtime(e, limits.timeout)),
        }
    }
}

impl Session {
    /// Whether the instance failed and is no longer called.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned || self.in_call
    }

    /// Hand `data` to `on-data`. Its output over `max_reply` bytes is not
    /// copied out of the guest.
    pub async fn on_data(&mut self, data: &[u8], limits: &CallLimits, max_reply: usize) -> Result<Output, CallError> {
        let resource = self.enter(limits)?;
        // SAFETY: as in `open_session`; the borrowed slice has another
        // lifetime only.
        let func: TypedFunc<bindings::DataParams<'_>, bindings::DataResult> =
            unsafe { TypedFunc::new_unchecked(self.funcs.on_data) };
        let call = func.call_async(&mut self.instance.store, (resource, data));
        let result = bindings::with_reply_cap(max_reply, call).await;
        self.leave(result, limits).map(|out| Output { bytes: out.bytes, close: out.close })
    }

    /// Tell the session the peer closed its side; its last bytes to write.
    pub async fn on_end(&mut self, limits: &CallLimits, max_reply: usize) -> Result<Reply, CallError> {
        let resource = self.enter(limits)?;
        // SAFETY: checked at load with `Func::typed`.
        let func: TypedFunc<bindings::EndParams, bindings::EndResult> =
            unsafe { TypedFunc::new_unchecked(self.funcs.on_end) };
        let call = func.call_async(&mut self.instance.store, (resource,));
        let result = bindings::with_reply_cap(max_reply, call).await;
        self.leave(result, limits)
    }

    /// Drop the resource, running the plugin's destructor, unless the
    /// instance failed (then `Err` says so). The instance is dropped after.
    pub async fn close(mut self, limits: &CallLimits) -> Result<(), CallError> {
        let Some(resource) = self.resource.take() else { return Ok(()) };
        if self.is_poisoned() {
            return Err(CallError::Trap("the instance failed earlier; its destructor is not run".into()));
        }
        self.instance.begin_call(limits)?;
        self.in_call = true;
        let result = resource.resource_drop_async(&mut self.instance.store).await;
        self.in_call = false;
        self.instance.store.data_mut().end_call();
        result.map_err(|e| CallError::from_wasmtime(e, limits.timeout))
    }

    /// Start a call: the resource to call, with a fresh budget.
    fn enter(&mut self, limits: &CallLimits) -> Result<ResourceAny, CallError> {
        let resource = match self.resource {
            Some(r) if !self.is_poisoned() => r,
            _ => return Err(CallError::Trap("the session's instance failed earlier".into())),
        };
        self.instance.begin_call(limits)?;
        self.in_call = true;
        Ok(resource)
    }

    /// End a call: its result, with a plugin error's message cut to size.
    fn leave<T>(
        &mut self,
        result: wasmtime::Result<(Result<T, bindings::ErrorText>,)>,
        limits: &CallLimits,
    ) -> Result<T, CallError> {
        self.in_call = false;
        self.instance.store.data_mut().end_call();
        match result {
            Ok((Ok(value),)) => Ok(value),
            Ok((Err(message),)) => Err(CallError::Plugin(super::truncate(message.0, MAX_LOG_MESSAGE))),
            Err(e) => {
                self.poisoned = true;
                Err(CallError::from_wasmtime(e, limits.timeout))
            }
        }
    }
}
