//! The Lua scripts, each in its own file under `lua/`, compiled into the
//! binary and loaded one way: [`Lua::invoke`] for a single call and
//! [`Lua::add_to`] + [`Lua::load`] for pipelines, both by EVALSHA with the
//! script loaded again when Redis has forgotten it (restart, SCRIPT FLUSH).
//! Each script's reply is decoded into a typed value next to its caller.

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, RedisResult, ToRedisArgs};

/// A Lua script.
pub struct Lua {
    script: redis::Script,
    source: &'static str,
}

impl Lua {
    /// A script from its source text.
    pub fn new(source: &'static str) -> Self {
        Self {
            script: redis::Script::new(source),
            source,
        }
    }

    /// Runs the script once (loading it if Redis does not know it).
    pub async fn invoke<C, T, K, A>(&self, conn: &mut C, keys: &[K], args: &[A]) -> RedisResult<T>
    where
        C: ConnectionLike,
        T: FromRedisValue,
        K: ToRedisArgs,
        A: ToRedisArgs,
    {
        let mut inv = self.script.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(a);
        }
        inv.invoke_async(conn).await
    }

    /// Adds an EVALSHA of the script to a pipeline. A pipeline that fails
    /// with NOSCRIPT is sent again after [`Lua::load`].
    pub fn add_to<K: ToRedisArgs, A: ToRedisArgs>(
        &self,
        pipe: &mut redis::Pipeline,
        keys: &[K],
        args: &[A],
    ) {
        pipe.cmd("EVALSHA")
            .arg(self.script.get_hash())
            .arg(keys.len())
            .arg(keys)
            .arg(args);
    }

    /// Loads the script into Redis's script cache.
    pub async fn load<C: ConnectionLike + Send + Sync>(&self, conn: &mut C) -> RedisResult<()> {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(self.source)
            .query_async::<String>(conn)
            .await
            .map(|_| ())
    }
}
