//! Who may do what to which account: a pure function of the actor, the target and the
//! action, so the whole role × action × target matrix is testable without a database.
//!
//! - USER: no account administration (their own profile and keys only).
//! - ADMIN: administers USER and ADMIN accounts; can never create, promote to, edit,
//!   disable, delete or reset a SUPER_ADMIN, nor mint or manage a SUPER_ADMIN's keys.
//! - SUPER_ADMIN (and the operator's `ADMIN_API_KEYS`): everything.
//! - Nobody changes their own role.
//!
//! "The last enabled SUPER_ADMIN cannot be removed or demoted" needs the database; the
//! caller checks it under a row lock when [`removes_super_admin`] says so (409).

use uuid::Uuid;

use crate::principal::Role;

/// An action on an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Read,
    /// Create an account with this role.
    Create(Role),
    ChangeRole(Role),
    SetEnabled(bool),
    Delete,
    ResetPassword,
    /// Email, allowed models, limits.
    Edit,
    /// Create, change or delete the account's API keys.
    ManageKeys,
}

/// The acting administrator: role and account (none for the operator's static key).
#[derive(Clone, Copy, Debug)]
pub struct Actor {
    pub role: Role,
    pub user_id: Option<Uuid>,
}

/// `Err(message)` is a 403.
pub fn check(
    actor: Actor,
    target: Option<(Uuid, Role)>,
    action: Action,
) -> Result<(), &'static str> {
    let is_self = matches!((actor.user_id, target), (Some(a), Some((t, _))) if a == t);
    if action == Action::ManageKeys && is_self {
        return Ok(());
    }
    if action == Action::Read && is_self {
        return Ok(());
    }
    if actor.role < Role::Admin {
        return Err("Administrator rights are required.");
    }
    if let Action::Create(role) = action {
        return if role == Role::SuperAdmin && actor.role < Role::SuperAdmin {
            Err("Only a SUPER_ADMIN may create a SUPER_ADMIN.")
        } else {
            Ok(())
        };
    }
    if action == Action::Read {
        return Ok(());
    }
    if let Action::ChangeRole(_) = action {
        if is_self {
            return Err("Nobody may change their own role.");
        }
    }
    let target_role = target.map(|(_, r)| r);
    if target_role == Some(Role::SuperAdmin) && actor.role < Role::SuperAdmin {
        return Err("Only a SUPER_ADMIN may change a SUPER_ADMIN account.");
    }
    if action == Action::ChangeRole(Role::SuperAdmin) && actor.role < Role::SuperAdmin {
        return Err("Only a SUPER_ADMIN may grant SUPER_ADMIN.");
    }
    Ok(())
}

/// Does the action take an enabled SUPER_ADMIN away (so the last one must be kept)?
pub fn removes_super_admin(target_role: Role, target_enabled: bool, action: Action) -> bool {
    target_role == Role::SuperAdmin
        && target_enabled
        && match action {
            Action::ChangeRole(r) => r != Role::SuperAdmin,
            Action::SetEnabled(e) => !e,
            Action::Delete => true,
            _ => false,
        }
}
