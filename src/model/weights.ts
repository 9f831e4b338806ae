// The weights' in-memory form is defined beside the converter that produces it; the network reads it from here.
export * from '../../converter/weights';
