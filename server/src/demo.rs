//! `hongbao serve --demo`: an org, two groups and four members with money, and a sign-in link
//! per member (a token in the link's fragment, which browsers do not send to servers). For
//! trying the page, not for production: the demo signs its own tokens.

use hongbao::{Amount, Engine, GroupId, NewOrg, OpId, OrgId, Policy, RecallPolicy, UserId};

use crate::auth::{mint, Claims};

/// The demo org, whose admin is member 1 and whose recall whitelist holds members 2 and 3.
pub const ORG: OrgId = OrgId(1);
/// The demo's group: the org's, with all four members.
pub const GROUP: GroupId = GroupId(100);
/// The demo's members.
pub const MEMBERS: [(u64, &str); 4] = [(1, "Ada 阿达"), (2, "Bo 波"), (3, "Chen 陈"), (4, "Dai 戴")];

/// A member of the demo and their sign-in link.
pub struct Invite {
    /// Who.
    pub user: UserId,
    /// Their name.
    pub name: &'static str,
    /// The page, signed in as them.
    pub link: String,
}

/// Sets the demo up (again: every step is a retry after the first run on a journal) and mints
/// a day's token for each member.
pub async fn setup(engine: &Engine, private_pem: &str, base: &str) -> Result<Vec<Invite>, String> {
    let users: Vec<UserId> = MEMBERS.iter().map(|(u, _)| UserId(*u)).collect();
    engine.set_members(GROUP, users.iter().copied()).await.map_err(|e| e.to_string())?;
    let spec = NewOrg { admins: vec![UserId(1)], name: "Demo 公司".into() };
    engine.create_org(ORG, spec).await.map_err(|e| e.to_string())?;
    if !engine.org(ORG).await.map_err(|e| e.to_string())?.groups.contains(&GROUP) {
        engine.attach_group(ORG, GROUP, UserId(1)).await.map_err(|e| e.to_string())?;
    }
    let policy = Policy { recall: RecallPolicy::Whitelist(vec![UserId(2), UserId(3)]), ..Policy::default() };
    engine.set_policy(ORG, UserId(1), policy).await.map_err(|e| e.to_string())?;
    let mut invites = Vec::new();
    for (user, name) in MEMBERS {
        engine.deposit(OpId(user), UserId(user), Amount::yuan(1_000)).await.map_err(|e| e.to_string())?;
        let device = format!("demo-{user}");
        let mut claims = Claims::member(UserId(user), &device, &["pwd", "bio"], 24 * 3600);
        let mut link = format!("{base}/#user={user}&device={device}&group={}", GROUP.0);
        if user == 1 {
            claims.adm = vec![ORG.0];
            link.push_str(&format!("&org={}", ORG.0));
        }
        let token = mint(private_pem.as_bytes(), &claims)?;
        link.push_str(&format!("&token={token}"));
        invites.push(Invite { user: UserId(user), name, link });
    }
    Ok(invites)
}
