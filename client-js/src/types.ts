/**
 * The wire shapes of the Backchannel protocol (v1) as this client reads and writes them.
 * The `protocol` crate of the server is the source of truth; `docs/protocol.md` describes
 * it. Every shape here is a plain JSON object: nothing is converted (ids are strings,
 * times are RFC 3339 strings).
 */

export type Role = 'customer' | 'agent' | 'supervisor' | 'admin';

/** Who did something: an event's `actor`, a typing user, a notification's `from`. */
export interface Actor {
  id: string;
  role: Role;
  name?: string;
}

/** Which side of the conversation a typing indicator or a note is for. */
export type TypingAudience = 'public' | 'internal' | 'supervisors';
export type NoteType = 'general' | 'context' | 'transfer' | 'resolution' | 'coaching';
export type NoteAudience = 'agents' | 'supervisors';

/** Every kind of conversation event the server may send; new kinds may appear. */
export type EventKind =
  | 'conversation_opened'
  | 'message'
  | 'note'
  | 'note_edited'
  | 'note_pinned'
  | 'assigned'
  | 'status_changed'
  | 'tags_changed'
  | 'fields_changed';

/**
 * One event of a conversation as the caller may see it. The kind-specific fields
 * (`body`, `note_type`, `status`...) sit beside `id`, `kind`, `at` and `actor`.
 */
export interface ConversationEvent {
  id: string;
  kind: EventKind | (string & {});
  at: string;
  actor: Actor;
  body?: string;
  note_type?: NoteType;
  audience?: NoteAudience;
  mentions?: string[];
  [field: string]: unknown;
}

/** `welcome`: the answer to `hello`. */
export interface WelcomeFrame {
  type: 'welcome';
  session_id: string;
  user: Actor;
  heartbeat_ms: number;
}

export interface OkFrame {
  type: 'ok';
  ref: Ref;
  [field: string]: unknown;
}

export interface ErrorFrame {
  type: 'error';
  ref?: Ref;
  code: string;
  message: string;
  missed?: HistoryEntry[];
}

/** A conversation event in the caller's stream, numbered by `seq` (1, 2, 3...). */
export interface EventFrame {
  type: 'event';
  conversation_id: string;
  seq: number;
  event: ConversationEvent;
}

export interface TypingFrame {
  type: 'typing';
  conversation_id: string;
  user: Actor;
  audience: TypingAudience;
}

export interface NotificationFrame {
  type: 'notification';
  id: number;
  kind: 'mention' | 'assigned';
  conversation_id: string;
  event_id: string;
  from: Actor;
  at: string;
  read: boolean;
}

export interface Viewer {
  id: string;
  name?: string;
  role: Role;
  typing: boolean;
  typing_audience?: TypingAudience;
}

/** Who is viewing (and typing in) a conversation; staff only. */
export interface PresenceFrame {
  type: 'presence';
  conversation_id: string;
  viewers: Viewer[];
}

export interface AgentPresence {
  id: string;
  name?: string;
  role: Role;
  status: 'online' | 'away' | 'offline';
  viewing: string[];
  open_conversations: number;
}

export interface AgentsFrame {
  type: 'agents';
  agents: AgentPresence[];
}

export interface AgentPresenceFrame extends AgentPresence {
  type: 'agent_presence';
}

export interface PongFrame {
  type: 'pong';
}

export type ServerFrame =
  | WelcomeFrame
  | OkFrame
  | ErrorFrame
  | EventFrame
  | TypingFrame
  | NotificationFrame
  | PresenceFrame
  | AgentsFrame
  | AgentPresenceFrame
  | PongFrame;

/** A client's correlation id, echoed in the one answer to its frame. */
export type Ref = string | number;

/** A frame the client sends: `type` and the command's fields (`ref` is added by the client). */
export interface CommandFrame {
  type: string;
  [field: string]: unknown;
}

/** The result of `subscribe`. */
export interface SubscribeResult {
  conversation_id: string;
  /** The last `seq` of the caller's stream when the subscription went live. */
  head: number;
  /** More events than the replay limit followed `since`: page the older ones over HTTP. */
  truncated?: boolean;
  /** With `truncated`: the first replayed `seq`. */
  replay_from?: number;
  /** `since` was beyond the head (the store was restored): what was held is dropped. */
  reset?: boolean;
}

/** The result of `send` and `note`. */
export interface AppendResult {
  event_id: string;
  /** The event's `seq` in the caller's stream. */
  seq: number;
  /** True when this `client_id` had been stored before: nothing new was written. */
  duplicate?: boolean;
  /** For `note`: the users notified by a mention. */
  mentioned?: string[];
}

/** One entry of `GET /v1/conversations/{id}/events` and of a reply guard's `missed`. */
export interface HistoryEntry {
  seq: number;
  event: ConversationEvent;
}
