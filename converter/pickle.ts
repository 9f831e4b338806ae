/**
 * A focused Python unpickler: the opcodes of protocols 0..5 that `torch.save` (and the plain
 * `pickle.dump` calls around it) emit. It never executes anything: GLOBALs become `PyGlobal`
 * references, and calling one (REDUCE/NEWOBJ) either goes through the caller's `reduce` hook
 * (how torch tensors are rebuilt) or yields an opaque `PyObject` placeholder, so unknown classes
 * in an optimizer state do not stop us from reading the weights next to them.
 */

/** Base class for values the caller's hooks create (storages, tensors). */
export abstract class HostValue {}

export class PyTuple {
  constructor(readonly items: PyValue[]) {}
}

export class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
  ) {}
  get qualifiedName(): string {
    return `${this.module}.${this.name}`;
  }
}

/** A dict or OrderedDict. Keys keep Python equality for str/int/bool/None; other keys by identity. */
export class PyDict {
  readonly entries = new Map<unknown, PyValue>();
  /** Instance state set by BUILD (an OrderedDict state_dict carries `_metadata` this way). */
  state: PyValue = null;
  get(key: string): PyValue | undefined {
    return this.entries.get(key);
  }
  has(key: string): boolean {
    return this.entries.has(key);
  }
  keys(): unknown[] {
    return [...this.entries.keys()];
  }
}

export class PySet {
  constructor(readonly items: PyValue[]) {}
}

/** An instance of a class we do not model: kept only so the surrounding structure stays intact. */
export class PyObject {
  state: PyValue = null;
  readonly listItems: PyValue[] = [];
  readonly dictItems: [PyValue, PyValue][] = [];
  constructor(
    readonly callable: PyValue,
    readonly args: PyValue[],
  ) {}
  get className(): string {
    return this.callable instanceof PyGlobal ? this.callable.qualifiedName : 'object';
  }
}

export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PyValue[]
  | PyTuple
  | PyDict
  | PySet
  | PyGlobal
  | PyObject
  | HostValue;

export class PickleError extends Error {
  constructor(
    message: string,
    readonly position: number,
  ) {
    super(message);
    this.name = 'PickleError';
  }
}

export interface UnpickleHooks {
  /** Resolves BINPERSID/PERSID ids (torch: storage tuples). */
  persistentLoad?: (pid: PyValue) => PyValue;
  /** Calls of known globals; return undefined to get an opaque placeholder. */
  reduce?: (callable: PyGlobal, args: PyValue[]) => PyValue | undefined;
}

export interface UnpickleResult {
  value: PyValue;
  /** Offset just past the STOP opcode (the legacy format stores several pickles back to back). */
  end: number;
}

/** Describes a value for error messages: its Python type, never its contents. */
export function pyTypeName(v: PyValue | undefined): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'None';
  if (typeof v === 'boolean') return 'bool';
  if (typeof v === 'number') return Number.isInteger(v) ? 'int' : 'float';
  if (typeof v === 'bigint') return 'int';
  if (typeof v === 'string') return 'str';
  if (v instanceof Uint8Array) return 'bytes';
  if (Array.isArray(v)) return 'list';
  if (v instanceof PyTuple) return 'tuple';
  if (v instanceof PyDict) return 'dict';
  if (v instanceof PySet) return 'set';
  if (v instanceof PyGlobal) return v.qualifiedName;
  if (v instanceof PyObject) return `${v.className} object`;
  return v.constructor.name;
}

function dictKey(k: PyValue): unknown {
  // Python: 1 == 1.0 == True; torch dicts only use str/int keys, so numbers and bools collapse.
  if (typeof k === 'boolean') return k ? 1 : 0;
  if (typeof k === 'bigint' && Number.isSafeInteger(Number(k))) return Number(k);
  return k;
}

/**
 * The largest integer a pickle may hold, in bytes (LONG1/LONG4) and decimal digits (INT/LONG
 * text). Checkpoints hold counters and sizes (8 bytes at most); the cap keeps a crafted
 * megabyte-long integer from costing time or memory.
 */
export const MAX_INT_BYTES = 256;
export const MAX_INT_DIGITS = 620;

/** Deepest MARK nesting accepted; torch.save's pickles nest a handful of levels. */
export const MAX_NESTING = 10_000;

function littleEndianSigned(bytes: Uint8Array, pos: number): number | bigint {
  if (bytes.length === 0) return 0;
  if (bytes.length > MAX_INT_BYTES) {
    throw new PickleError(`an integer of ${bytes.length} bytes (more than ${MAX_INT_BYTES}): not a value a checkpoint holds`, pos);
  }
  // hex text is read in linear time, where shifting a BigInt byte by byte is quadratic
  const hex = Buffer.from(bytes).reverse().toString('hex');
  let v = BigInt(`0x${hex}`);
  if (bytes[bytes.length - 1] & 0x80) v -= 1n << BigInt(8 * bytes.length);
  return Number.isSafeInteger(Number(v)) ? Number(v) : v;
}

function parseIntText(text: string, pos: number): number | bigint {
  const t = text.endsWith('L') ? text.slice(0, -1) : text;
  if (t.length > MAX_INT_DIGITS) {
    throw new PickleError(`an integer of ${t.length} digits (more than ${MAX_INT_DIGITS}): not a value a checkpoint holds`, pos);
  }
  if (!/^[+-]?\d+$/.test(t)) throw new PickleError(`bad integer literal '${text.slice(0, 40)}'`, pos);
  const b = BigInt(t);
  return Number.isSafeInteger(Number(b)) ? Number(b) : b;
}

/** `target.push(...items)` without the argument-count limit of a spread (a crafted list can hold millions). */
function pushAll<T>(target: T[], items: readonly T[]): void {
  for (const item of items) target.push(item);
}

/** Python 2 `repr(str)` body (STRING opcode): quotes and the common escapes. */
function parseStringRepr(text: string, pos: number): string {
  const q = text[0];
  if ((q !== "'" && q !== '"') || text[text.length - 1] !== q) {
    throw new PickleError('STRING opcode argument is not quoted', pos);
  }
  return unescapePython(text.slice(1, -1));
}

function unescapePython(s: string): string {
  return s.replace(/\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)/g, (_, e: string) => {
    switch (e[0]) {
      case 'x':
      case 'u':
      case 'U':
        return e.length > 1 ? String.fromCodePoint(Number.parseInt(e.slice(1), 16)) : e;
      case 'n': return '\n';
      case 't': return '\t';
      case 'r': return '\r';
      case '0': return '\0';
      default: return e;
    }
  });
}

const utf8 = new TextDecoder('utf-8', { fatal: false });

function latin1(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
}

/**
 * Reads one pickle starting at `start` of `data`.
 * Throws PickleError (with the byte offset) on truncated or malformed data.
 */
export function unpickle(data: Uint8Array, start = 0, hooks: UnpickleHooks = {}): UnpickleResult {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let pos = start;
  let stack: PyValue[] = [];
  const marks: PyValue[][] = [];
  const memo = new Map<number, PyValue>();

  const need = (n: number): void => {
    if (pos + n > data.length) throw new PickleError('pickle data ends unexpectedly (truncated file?)', data.length);
  };
  const u8 = (): number => {
    need(1);
    return data[pos++];
  };
  const u16 = (): number => {
    need(2);
    const v = view.getUint16(pos, true);
    pos += 2;
    return v;
  };
  const u32 = (): number => {
    need(4);
    const v = view.getUint32(pos, true);
    pos += 4;
    return v;
  };
  const i32 = (): number => {
    need(4);
    const v = view.getInt32(pos, true);
    pos += 4;
    return v;
  };
  const u64 = (): number => {
    need(8);
    const v = view.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new PickleError('length field too large', pos - 8);
    return Number(v);
  };
  const bytes = (n: number): Uint8Array => {
    need(n);
    const b = data.subarray(pos, pos + n);
    pos += n;
    return b;
  };
  const line = (): string => {
    const at = data.indexOf(0x0a, pos);
    if (at < 0) throw new PickleError('pickle data ends unexpectedly (truncated file?)', data.length);
    const s = latin1(data.subarray(pos, at));
    pos = at + 1;
    return s;
  };
  // `stack` is rebound by MARK handling, so never write `stack.push(f(popMark()))` inline:
  // the receiver would be evaluated before popMark() swaps the array.
  const push = (v: PyValue): void => {
    stack.push(v);
  };
  const pop = (): PyValue => {
    if (stack.length === 0) throw new PickleError('pickle stack underflow', pos);
    return stack.pop() as PyValue;
  };
  const top = (): PyValue => {
    if (stack.length === 0) throw new PickleError('pickle stack underflow', pos);
    return stack[stack.length - 1];
  };
  const popMark = (): PyValue[] => {
    const items = stack;
    const prev = marks.pop();
    if (prev === undefined) throw new PickleError('pickle MARK missing', pos);
    stack = prev;
    return items;
  };
  const memoGet = (i: number): PyValue => {
    if (!memo.has(i)) throw new PickleError(`pickle memo has no entry ${i}`, pos);
    return memo.get(i) as PyValue;
  };
  const call = (callable: PyValue, args: PyValue[]): PyValue => {
    if (callable instanceof PyGlobal) {
      const made = hooks.reduce?.(callable, args);
      if (made !== undefined) return made;
      if (callable.module === 'collections' && callable.name === 'OrderedDict') return new PyDict();
    }
    return new PyObject(callable, args);
  };
  const setItems = (target: PyValue, kv: PyValue[]): void => {
    if (kv.length % 2 !== 0) throw new PickleError('odd number of items for SETITEMS', pos);
    for (let i = 0; i < kv.length; i += 2) {
      if (target instanceof PyDict) target.entries.set(dictKey(kv[i]), kv[i + 1]);
      else if (target instanceof PyObject) target.dictItems.push([kv[i], kv[i + 1]]);
      else throw new PickleError(`cannot set items on ${pyTypeName(target)}`, pos);
    }
  };
  const appendItems = (target: PyValue, items: PyValue[]): void => {
    if (Array.isArray(target)) pushAll(target, items);
    else if (target instanceof PyObject) pushAll(target.listItems, items);
    else throw new PickleError(`cannot append to ${pyTypeName(target)}`, pos);
  };
  const persistent = (pid: PyValue): PyValue => {
    if (!hooks.persistentLoad) throw new PickleError('unexpected persistent id', pos);
    return hooks.persistentLoad(pid);
  };

  for (;;) {
    const opPos = pos;
    const op = u8();
    switch (op) {
      case 0x80: // PROTO
        u8();
        break;
      case 0x95: // FRAME: framing is only a buffering hint
        u64();
        break;
      case 0x2e: // STOP
        return { value: pop(), end: pos };
      case 0x28: // MARK
        if (marks.length >= MAX_NESTING) throw new PickleError(`nested more than ${MAX_NESTING} levels deep`, opPos);
        marks.push(stack);
        stack = [];
        break;
      case 0x30: // POP
        pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        push(top());
        break;
      case 0x4e: // NONE
        push(null);
        break;
      case 0x88: // NEWTRUE
        push(true);
        break;
      case 0x89: // NEWFALSE
        push(false);
        break;
      case 0x49: { // INT (text; protocol 0 writes bools as 00/01)
        const t = line();
        push(t === '01' ? true : t === '00' ? false : parseIntText(t, opPos));
        break;
      }
      case 0x4a: // BININT
        push(i32());
        break;
      case 0x4b: // BININT1
        push(u8());
        break;
      case 0x4d: // BININT2
        push(u16());
        break;
      case 0x4c: // LONG (text)
        push(parseIntText(line(), opPos));
        break;
      case 0x8a: // LONG1
        push(littleEndianSigned(bytes(u8()), opPos));
        break;
      case 0x8b: { // LONG4
        const n = i32();
        if (n < 0) throw new PickleError('negative LONG4 length', opPos);
        push(littleEndianSigned(bytes(n), opPos));
        break;
      }
      case 0x46: // FLOAT (text)
        push(Number.parseFloat(line()));
        break;
      case 0x47: { // BINFLOAT: big-endian
        need(8);
        push(view.getFloat64(pos, false));
        pos += 8;
        break;
      }
      case 0x53: // STRING (protocol 0 py2 str)
        push(parseStringRepr(line(), opPos));
        break;
      case 0x54: { // BINSTRING
        const n = i32();
        if (n < 0) throw new PickleError('negative BINSTRING length', opPos);
        push(latin1(bytes(n)));
        break;
      }
      case 0x55: // SHORT_BINSTRING
        push(latin1(bytes(u8())));
        break;
      case 0x42: // BINBYTES
        push(bytes(u32()));
        break;
      case 0x43: // SHORT_BINBYTES
        push(bytes(u8()));
        break;
      case 0x8e: // BINBYTES8
      case 0x96: // BYTEARRAY8
        push(bytes(u64()));
        break;
      case 0x56: // UNICODE (raw-unicode-escape text)
        push(unescapePython(line()));
        break;
      case 0x58: // BINUNICODE
        push(utf8.decode(bytes(u32())));
        break;
      case 0x8c: // SHORT_BINUNICODE
        push(utf8.decode(bytes(u8())));
        break;
      case 0x8d: // BINUNICODE8
        push(utf8.decode(bytes(u64())));
        break;
      case 0x7d: // EMPTY_DICT
        push(new PyDict());
        break;
      case 0x64: { // DICT
        const d = new PyDict();
        setItems(d, popMark());
        push(d);
        break;
      }
      case 0x73: { // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: { // SETITEMS
        const kv = popMark();
        setItems(top(), kv);
        break;
      }
      case 0x5d: // EMPTY_LIST
        push([]);
        break;
      case 0x6c: // LIST
        push(popMark());
        break;
      case 0x61: { // APPEND
        const v = pop();
        appendItems(top(), [v]);
        break;
      }
      case 0x65: { // APPENDS
        const items = popMark();
        appendItems(top(), items);
        break;
      }
      case 0x29: // EMPTY_TUPLE
        push(new PyTuple([]));
        break;
      case 0x74: // TUPLE
        push(new PyTuple(popMark()));
        break;
      case 0x85: // TUPLE1
        push(new PyTuple([pop()]));
        break;
      case 0x86: { // TUPLE2
        const b = pop();
        const a = pop();
        push(new PyTuple([a, b]));
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop();
        const b = pop();
        const a = pop();
        push(new PyTuple([a, b, c]));
        break;
      }
      case 0x8f: // EMPTY_SET
        push(new PySet([]));
        break;
      case 0x90: { // ADDITEMS
        const items = popMark();
        const s = top();
        if (!(s instanceof PySet)) throw new PickleError(`cannot add items to ${pyTypeName(s)}`, opPos);
        pushAll(s.items, items);
        break;
      }
      case 0x91: // FROZENSET
        push(new PySet(popMark()));
        break;
      case 0x63: { // GLOBAL
        const module = line();
        const name = line();
        push(new PyGlobal(module, name));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') {
          throw new PickleError('STACK_GLOBAL needs two strings', opPos);
        }
        push(new PyGlobal(module, name));
        break;
      }
      case 0x52: { // REDUCE
        const args = pop();
        const callable = pop();
        push(call(callable, args instanceof PyTuple ? args.items : []));
        break;
      }
      case 0x81: { // NEWOBJ
        const args = pop();
        const cls = pop();
        push(new PyObject(cls, args instanceof PyTuple ? args.items : []));
        break;
      }
      case 0x92: { // NEWOBJ_EX
        pop(); // kwargs
        const args = pop();
        const cls = pop();
        push(new PyObject(cls, args instanceof PyTuple ? args.items : []));
        break;
      }
      case 0x6f: { // OBJ
        const items = popMark();
        if (items.length === 0) throw new PickleError('OBJ without a class', opPos);
        push(new PyObject(items[0], items.slice(1)));
        break;
      }
      case 0x69: { // INST
        const cls = new PyGlobal(line(), line());
        push(new PyObject(cls, popMark()));
        break;
      }
      case 0x62: { // BUILD
        const state = pop();
        const obj = top();
        if (obj instanceof PyDict || obj instanceof PyObject) obj.state = state;
        break;
      }
      case 0x70: // PUT
        memo.set(Number.parseInt(line(), 10), top());
        break;
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x67: // GET
        push(memoGet(Number.parseInt(line(), 10)));
        break;
      case 0x68: // BINGET
        push(memoGet(u8()));
        break;
      case 0x6a: // LONG_BINGET
        push(memoGet(u32()));
        break;
      case 0x50: // PERSID
        push(persistent(line()));
        break;
      case 0x51: // BINPERSID
        push(persistent(pop()));
        break;
      default:
        throw new PickleError(`unsupported pickle opcode 0x${op.toString(16).padStart(2, '0')}`, opPos);
    }
  }
}
