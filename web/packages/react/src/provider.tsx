"use client";
/**
 * One FanoutClient per provider, created in an effect (never during server rendering).
 *
 * The connection depends on `url` alone: `getToken` and the options are read
 * through a ref, so a parent that passes an inline function or object on every
 * render does not reconnect. React StrictMode mounts, unmounts and mounts again
 * in development; the unmount only schedules the close, and the immediate
 * remount takes the same client back, so StrictMode opens one connection.
 */
import { FanoutClient, type FanoutClientOptions, type TokenProvider } from "@fanout/client";
import { createContext, useContext, useEffect, useRef, useState, type ReactNode } from "react";

const FanoutContext = createContext<FanoutClient | null>(null);

export interface FanoutProviderProps extends Omit<FanoutClientOptions, "getToken"> {
  readonly getToken: TokenProvider;
  readonly children?: ReactNode;
}

export function FanoutProvider({ url, getToken, children, ...options }: FanoutProviderProps): ReactNode {
  const latest = useRef({ getToken, options });
  const pendingClose = useRef<{ url: string; client: FanoutClient; timer: ReturnType<typeof setTimeout> } | null>(null);
  const [client, setClient] = useState<FanoutClient | null>(null);

  useEffect(() => {
    latest.current = { getToken, options };
  });

  useEffect(() => {
    let made: FanoutClient;
    const pending = pendingClose.current;
    if (pending !== null && pending.url === url) {
      clearTimeout(pending.timer); // StrictMode's remount: keep the connection
      pendingClose.current = null;
      made = pending.client;
    } else {
      made = new FanoutClient({ ...latest.current.options, url, getToken: () => latest.current.getToken() });
      made.connect();
    }
    setClient(made);
    return () => {
      const timer = setTimeout(() => {
        made.close();
        if (pendingClose.current?.client === made) pendingClose.current = null;
      }, 0);
      pendingClose.current = { url, client: made, timer };
    };
  }, [url]);

  return <FanoutContext.Provider value={client}>{children}</FanoutContext.Provider>;
}

/** The provider's client; null during server rendering and before the first effect. */
export function useFanoutClient(): FanoutClient | null {
  return useContext(FanoutContext);
}
