// The official img2pose release (no Node dependencies: the browser build uses it too).

/** The official release, as upstream publishes it. */
export const RELEASE = {
  name: 'img2pose_v1',
  driveFileId: '1OvnZ7OUQFg2bAgFADhT7UnCkSaXst10O',
  /** Drive's direct-download endpoint; large files answer with a confirmation page first. */
  url: 'https://drive.google.com/uc?export=download&id=1OvnZ7OUQFg2bAgFADhT7UnCkSaXst10O',
  /** The file's page, for a download by hand in a browser. */
  pageUrl: 'https://drive.google.com/file/d/1OvnZ7OUQFg2bAgFADhT7UnCkSaXst10O/view',
  members: {
    checkpoint: 'models/img2pose_v1.pth',
    poseMean: 'models/WIDER_train_pose_mean_v1.npy',
    poseStddev: 'models/WIDER_train_pose_stddev_v1.npy',
  },
  licence: 'CC BY-NC 4.0 (non-commercial use only), by the img2pose authors',
} as const;
